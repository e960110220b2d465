"""Rules to check, right and wrong, written as their authors would: JAX's own shipped rules,
the project's, and a catalogue of plausible wrong rules, each with the checks that must
reject it (the *kind* of mistake, not a tolerance).

A right rule must pass every check (no false alarm); a wrong rule must fail at least one
of the checks named in `killers` (and `assert_vjp`/`assert_jvp` must raise).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref import RuleCheck


def _x(shape, seed=0, scale=1.0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, dtype)


# --- references written from the definitions -----------------------------------------------


def naive_softmax(x):
    e = jnp.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def naive_log_softmax(x):
    s = x - x.max(-1, keepdims=True)
    return s - jnp.log(jnp.exp(s).sum(-1, keepdims=True))


def naive_lse(x):
    m = jnp.max(x)
    return m + jnp.log(jnp.sum(jnp.exp(x - m)))


def naive_gelu(x):
    return 0.5 * x * (1 + jnp.tanh(jnp.sqrt(2 / jnp.pi) * (x + 0.044715 * x**3)))


def naive_softplus(x):
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def naive_sigmoid(x):
    return 1 / (1 + jnp.exp(-x))


def naive_tanh(x):
    return 1 - 2 / (jnp.exp(2 * x) + 1)


def naive_silu(x):
    return x / (1 + jnp.exp(-x))


# --- right rules -------------------------------------------------------------------------


@jax.custom_vjp
def tanh_rule(x):
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y


tanh_rule.defvjp(_tanh_fwd, lambda y, g: (g * (1 - y**2),))


def matmul(A, B):
    return A @ B


def matmul_vjp(A, B, g):
    """C = A·B: Ā = Ḡ·Bᵀ, B̄ = Aᵀ·Ḡ"""
    return g @ B.T, A.T @ g


@jax.custom_jvp
def softplus_rule(x):
    return naive_softplus(x)


@softplus_rule.defjvp
def _softplus_jvp(p, t):
    (x,), (u,) = p, t
    return softplus_rule(x), u * jax.nn.sigmoid(x)


def bias_add(x, b):
    return x + b  # b (C,) broadcast over the rows of x (N, C)


def bias_add_vjp(x, b, g):
    return g, g.sum(0)


def right_rules(dtype=np.float64) -> list[RuleCheck]:
    s = 4.0 if dtype == np.float64 else 2.0  # moderate logits in low precision (see note)
    x = _x((4, 6), 0, s, dtype)
    labels = jnp.array([0, 5, 2, 2])
    import handgrad

    sat = _x((4, 6), 7, 10.0, dtype)  # saturating: the rules' cancelling terms round
    return [
        RuleCheck("jax.nn.sigmoid, |x| ~ 10", jax.nn.sigmoid, (sat,), reference=naive_sigmoid),
        RuleCheck("jnp.tanh, |x| ~ 10", jnp.tanh, (sat,), reference=naive_tanh),
        RuleCheck("jax.nn.softmax, |x| ~ 10", jax.nn.softmax, (sat,), reference=naive_softmax),
        RuleCheck("jax.nn.relu", jax.nn.relu, (x,), order=2),
        RuleCheck("jax.nn.relu at 0", jax.nn.relu, (x.at[0, :3].set(0),)),
        RuleCheck("jax.nn.softmax", jax.nn.softmax, (x,), reference=naive_softmax, order=2),
        RuleCheck("jax.nn.log_softmax", jax.nn.log_softmax, (x,), reference=naive_log_softmax),
        RuleCheck("jax.nn.logsumexp", jax.nn.logsumexp, (x,), reference=naive_lse, order=2),
        RuleCheck("jax.nn.gelu", jax.nn.gelu, (x,), reference=naive_gelu),
        RuleCheck("jax.nn.softplus jvp", jax.nn.softplus, (x,), "jvp", reference=naive_softplus),
        RuleCheck("jax.nn.silu", jax.nn.silu, (x,), reference=naive_silu),
        RuleCheck("jax.numpy.linalg.norm", jnp.linalg.norm, (x,)),  # its own grad: FD judges
        RuleCheck("tanh custom_vjp", tanh_rule, (x,), order=2),
        RuleCheck("matmul vjp", matmul, (x, _x((6, 3), 1, 1.0, dtype)), rule=matmul_vjp),
        RuleCheck("softplus custom_jvp", softplus_rule, (x,), "jvp"),
        RuleCheck("softplus custom_jvp as vjp", softplus_rule, (x,)),
        RuleCheck("bias add vjp", bias_add, (x, _x((6,), 2, 1.0, dtype)), rule=bias_add_vjp),
        RuleCheck(
            "handgrad.softmax_cross_entropy",
            handgrad.softmax_cross_entropy,
            (x, labels),
            order=2,
        ),
    ]


# --- wrong rules ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WrongRule:
    check: RuleCheck
    mistake: str
    killers: tuple[str, ...]  # the checks (oracles or contracts) that must fail it


def _custom_tanh(bwd, fwd=_tanh_fwd):
    f = jax.custom_vjp(lambda x: jnp.tanh(x))
    f.defvjp(fwd, bwd)
    return f


def mul_sin(a, b):
    return a * jnp.sin(b)


_CACHE: dict[str, Any] = {}


def _cached_fwd(x):
    y = jnp.tanh(x)
    _CACHE["y"] = y  # the residual kept in a Python global, not returned
    return y, None


def bias_add_vjp_host(x, b, g):
    """b̄ = Σ_rows Ḡ by a host kernel written for one example: np.sum(g, axis=0) means the
    rows. Under vmap (expand_dims) axis 0 is the batch: with as many rows as examples the
    shapes even agree, and the values are silently wrong."""
    bbar = jax.pure_callback(
        lambda g: np.sum(g, axis=0).astype(g.dtype),
        jax.ShapeDtypeStruct(b.shape, b.dtype),
        g,
        vmap_method="expand_dims",
    )
    return g, bbar


@jax.custom_jvp
def softplus_half(x):
    return naive_softplus(x)


@softplus_half.defjvp
def _softplus_half_jvp(p, t):
    (x,), (u,) = p, t
    return softplus_half(x), 0.5 * u * jax.nn.sigmoid(x)  # wrong tangent scale


@jax.custom_jvp
def softplus_abs(x):
    return naive_softplus(x)


@softplus_abs.defjvp
def _softplus_abs_jvp(p, t):
    (x,), (u,) = p, t
    return softplus_abs(x), jnp.abs(u) * jax.nn.sigmoid(x)  # not linear in the tangent


@jax.custom_jvp
def softplus_nonlinear(x):
    return naive_softplus(x)


@softplus_nonlinear.defjvp
def _softplus_nonlinear_jvp(p, t):
    (x,), (u,) = p, t
    # right along every single tangent direction it is tried with alone would need u²;
    # this one is right in forward mode but cannot be transposed by jax.grad
    return softplus_nonlinear(x), jax.lax.cond(
        jnp.all(u == 0), lambda: u, lambda: u * jax.nn.sigmoid(x)
    )


def wrong_rules() -> list[WrongRule]:
    x = _x((4, 4), 0, 1.0)  # square: a transposed rule has the right shape
    y = _x((4, 4), 1, 1.0)
    v = _x((6,), 2, 1.0)
    W = []

    def add(name, check_kw, mistake, killers):
        W.append(WrongRule(RuleCheck(name, **check_kw), mistake, killers))

    add(
        "cotangent ignored",
        dict(f=_custom_tanh(lambda r, g: (1 - r**2,)), primals=(x,)),
        "bwd returns the gradient of sum(f): the cotangent is never used (a .sum() test passes)",
        ("autodiff", "finite_difference"),
    )
    add(
        "cotangent dropped for one input",
        dict(f=mul_sin, primals=(x, y), rule=lambda a, b, g: (g * jnp.sin(b), None)),
        "the cotangent of b is never propagated (None: zeros)",
        ("autodiff", "finite_difference"),
    )
    add(
        "transposed on square shapes",
        dict(f=matmul, primals=(x, y), rule=lambda A, B, g: (g @ B, A @ g)),
        "Ā = Ḡ·B instead of Ḡ·Bᵀ: runs on square shapes",
        ("autodiff", "finite_difference"),
    )
    add(
        "permuted cotangent",
        dict(f=_custom_tanh(lambda r, g: (g[::-1] * (1 - r**2),)), primals=(x,)),
        "dO read with its rows reversed (a mis-indexed kernel): all-ones cotangents hide it",
        ("autodiff", "finite_difference"),
    )
    add(
        "right alone, wrong under vmap",
        dict(f=bias_add, primals=(_x((3, 6), 5), v), rule=bias_add_vjp_host),
        "a host kernel (pure_callback) whose axis 0 is the batch under vmap, not the rows",
        ("vmap",),
    )
    add(
        "right alone, wrong when composed",
        dict(f=_custom_tanh(lambda r, g: (g * (1 - _CACHE["y"] ** 2),), _cached_fwd), primals=(x,)),
        "the residual is kept in a Python global: a second call overwrites the first's",
        ("composed",),
    )
    add(
        "float32 inside a float64 call",
        dict(
            f=_custom_tanh(
                lambda r, g: (
                    (g.astype(jnp.float32) * (1 - r.astype(jnp.float32) ** 2)).astype(r.dtype),
                )
            ),
            primals=(x,),
        ),
        "the backward computes in float32 and casts back: 1e-7 errors in a float64 rule",
        ("autodiff", "finite_difference"),
    )
    add(
        "cotangent of the wrong dtype",
        dict(
            f=mul_sin,
            primals=(x, y),
            rule=lambda a, b, g: ((g * jnp.sin(b)).astype(jnp.float32), g * a * jnp.cos(b)),
        ),
        "the cotangent of a float64 input is returned in float32",
        ("structure",),
    )
    add(
        "wrong second order",
        dict(
            f=_custom_tanh(lambda r, g: (g * (1 - jax.lax.stop_gradient(r) ** 2),)),
            primals=(x,),
            order=2,
        ),
        "first derivatives right, but the residual is cut from the graph: d²/dx² lost",
        ("second_order",),
    )
    add(
        "custom JVP with a wrong tangent scale",
        dict(f=softplus_half, primals=(x,), kind="jvp"),
        "the tangent is halved: softplus' = σ(x)/2",
        ("autodiff", "finite_difference"),
    )
    add(
        "custom JVP not linear in the tangent",
        dict(f=softplus_abs, primals=(x,), kind="jvp"),
        "|u|·σ(x): right for positive tangents only",
        ("autodiff", "finite_difference"),
    )
    add(
        "custom JVP that cannot be transposed",
        dict(f=softplus_nonlinear, primals=(x,), kind="jvp"),
        "right in forward mode, but jax.grad through it cannot transpose a cond on the tangent",
        ("composed",),
    )
    add(
        "primal output of fwd differs",
        dict(
            f=_custom_tanh(lambda r, g: (g * (1 - r**2),), lambda x: (x, jnp.tanh(x))), primals=(x,)
        ),
        "fwd returns its input instead of tanh(x): jax.grad sees another function's values",
        ("primal",),
    )
    add(
        "broadcast reduced wrong",
        dict(f=bias_add, primals=(_x((5, 6), 3), v), rule=lambda x, b, g: (g, g[0])),
        "b̄ = Ḡ[0] instead of Σ_rows Ḡ: the broadcast's transpose forgotten",
        ("autodiff", "finite_difference"),
    )
    add(
        "mean instead of the weighted sum",
        dict(
            f=jax.nn.softmax,
            primals=(_x((3, 5), 4),),
            rule=lambda z, g: (jax.nn.softmax(z) * (g - g.mean(-1, keepdims=True)),),
        ),
        "softmax backward y ⊙ (ȳ − mean ȳ) for y ⊙ (ȳ − ⟨ȳ, y⟩): right for all-ones ȳ",
        ("autodiff", "finite_difference"),
    )
    add(
        "host values in the rule",
        dict(
            f=_custom_tanh(lambda r, g: (g * (1 - r**2) * float(np.asarray(r).max() > -2),)),
            primals=(x,),
        ),
        "the rule reads concrete values (np.asarray): it breaks under jit",
        ("jit",),
    )
    return W


def rule_table_rows(results_by_name: dict[str, list]) -> list[dict[str, Any]]:
    """One row per wrong rule: which checks failed it."""
    rows = []
    for w in wrong_rules():
        res = results_by_name[w.check.name]
        failed = sorted({r.oracle for r in res if r.status == "failed"})
        rows.append({"rule": w.check.name, "mistake": w.mistake, "failed by": failed})
    return rows
