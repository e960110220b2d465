"""JAX's Pallas ops that run on a CPU in interpret mode: each with the arguments that make
its kernel's blocks fit (shapes, block sizes), its dtypes, and `interpret=True`. Their
derivative rules are a `custom_vjp` around backward kernels, or autodiff through the
kernel: the audit judges them as it judges any function. Ops for the TPU only (Mosaic,
no interpret path on a CPU) are skipped, said so."""

from __future__ import annotations

import functools
import importlib

import jax.numpy as jnp
import numpy as np

__all__ = ["PALLAS_MODULE", "pallas_candidates", "pallas_setup"]

PALLAS_MODULE = "jax.experimental.pallas.ops"
_GPU = f"{PALLAS_MODULE}.gpu"


def _mha_kwargs():
    from jax.experimental.pallas.ops.gpu import attention

    b = 16
    sizes = attention.BlockSizes(b, b, b, b, b, b)
    return {"segment_ids": None, "block_sizes": sizes}


# dotted name: (input shapes, keyword arguments (a callable: made at import), dtypes)
OPS = {
    f"{_GPU}.layer_norm.layer_norm": (((1, 4, 8), (8,), (8,)), {}, ("float64", "float32")),
    f"{_GPU}.rms_norm.rms_norm": (((1, 4, 8), (8,), (8,)), {}, ("float64", "float32")),
    f"{_GPU}.softmax.softmax": (((4, 8),), {}, ("float64", "float32")),
    # the kernel accumulates in float32 (its loop carry): it runs in float32 only
    f"{_GPU}.attention.mha": (((1, 16, 2, 16),) * 3, _mha_kwargs, ("float32",)),
    f"{_GPU}.decode_attention.mqa": (
        ((2, 4, 16), (2, 32, 16), (2, 32, 16)),
        {"block_h": 4, "block_k": 16, "k_splits": 2},
        ("float32",),
    ),
}
TPU_ONLY = {
    f"{PALLAS_MODULE}.tpu.flash_attention.flash_attention": "TPU only (Mosaic: no CPU path)",
    f"{PALLAS_MODULE}.tpu.splash_attention": "TPU only (Mosaic: no CPU path)",
    f"{PALLAS_MODULE}.tpu.paged_attention": "TPU only (Mosaic: no CPU path)",
    f"{PALLAS_MODULE}.tpu.megablox.gmm": "TPU only (Mosaic: no CPU path)",
    f"{PALLAS_MODULE}.tpu.matmul.matmul": "TPU only (Mosaic: no CPU path)",
}


def _resolve(dotted):
    mod, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def pallas_candidates():
    """[(name, function or None, skip reason)] for the ops above."""
    out = []
    for name in OPS:
        try:
            out.append((name, _resolve(name), ""))
        except (ImportError, AttributeError) as e:  # this JAX has no such op
            out.append((name, None, f"not in this JAX ({type(e).__name__})"))
    out += [(name, None, why) for name, why in TPU_ONLY.items()]
    return out


def pallas_setup(name):
    """The op's Setup (jax_ref.audit.inputs), or None when it is not a Pallas op here."""
    from jax_ref.audit.inputs import DOMAINS, Setup, real_view, usable

    if name not in OPS:
        return None
    shapes, kwargs, dtypes = OPS[name]
    kwargs = kwargs() if callable(kwargs) else kwargs
    fn = functools.partial(_resolve(name), interpret=True, **kwargs)
    rng = np.random.default_rng(7)
    dt = jnp.dtype(dtypes[0])
    floats = tuple(jnp.asarray(rng.uniform(-1.8, 1.8, s), dt) for s in shapes)
    g = real_view(fn)
    why = usable(g, floats)
    if why:
        return why
    return Setup(g, floats, DOMAINS[2], False, None, (), shaped=True, dtypes=dtypes)
