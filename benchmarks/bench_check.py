"""How long check_gradients takes on a large ReLU MLP, beside torch's gradcheck fast mode.

    python benchmarks/bench_check.py

The 814,090-parameter 784-1024-10 MLP (N = 64), float64: check_gradients with finite
differences alone (torch's fast mode is finite differences against one backward pass),
and with both oracles; `torch.autograd.gradcheck(fast_mode=True)` on the same network
when torch is installed (it is not a dependency). Rounds are interleaved, the first call
of each (compilation) is left out, and the figure is the median; the ratio is the median
of the per-round ratios. Also shows that a gradient rounded to float32 fails the check.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import handgrad as hg  # noqa: E402
import jax_ref  # noqa: E402

D, H, C, N = 784, 1024, 10, 64


def _torch_check(params, X, y):
    try:
        import torch
    except ImportError:
        return None
    W1, b1, W2, b2 = (torch.tensor(np.asarray(p), requires_grad=True) for p in params)
    Xt, yt = torch.tensor(np.asarray(X)), torch.tensor(np.asarray(y), dtype=torch.long)

    def f(W1, b1, W2, b2):
        z = torch.relu(Xt @ W1 + b1) @ W2 + b2
        return torch.nn.functional.cross_entropy(z, yt)

    def run():
        return torch.autograd.gradcheck(f, (W1, b1, W2, b2), fast_mode=True)

    return run


def main(rounds: int = 7) -> None:
    params = hg.init_params(jax.random.PRNGKey(0), D, H, C, dtype=jnp.float64)
    X = jax.random.normal(jax.random.PRNGKey(1), (N, D), jnp.float64)
    y = jax.random.randint(jax.random.PRNGKey(2), (N,), 0, C)
    grads = jax.jit(hg.mlp_grads)
    size = sum(p.size for p in params)

    def fd_only():
        return jax_ref.check_gradients(
            jax_ref.mlp_loss, grads, params, X, y, returns_loss=True, oracles=("finite_difference",)
        )

    def both():
        return jax_ref.check_gradients(jax_ref.mlp_loss, grads, params, X, y, returns_loss=True)

    runs = {"handgrad, finite differences alone": fd_only, "handgrad, both oracles": both}
    torch_run = _torch_check(params, X, y)
    if torch_run is not None:
        runs["torch gradcheck(fast_mode=True)"] = torch_run
    times = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, fn in runs.items():
            t = time.perf_counter()
            out = fn()
            if r:  # round 0 compiles
                times[name].append(time.perf_counter() - t)
            if name.startswith("handgrad") and r == rounds:
                statuses = sorted({x.status for x in out})
                print(
                    f"  {name}: statuses {statuses}; detects >= "
                    + ", ".join(
                        f"{x.parameter} {x.detectable_rel_err:.1g}"
                        for x in out
                        if x.oracle == "finite_difference"
                    )
                )
    print(f"784-1024-10 MLP ({size:,} parameters, N = {N}, float64), median of {rounds} rounds:")
    for name, ts in times.items():
        print(f"  {name:38s} {statistics.median(ts):.3f} s")
    if torch_run is not None:
        ref = times["torch gradcheck(fast_mode=True)"]
        for name in ("handgrad, finite differences alone", "handgrad, both oracles"):
            ratio = statistics.median(a / b for a, b in zip(times[name], ref))
            print(
                f"  {name} / torch fast mode: {ratio:.2f} (target <= 1.00: "
                f"{'met' if ratio <= 1 else 'MISSED'})"
            )
    else:
        print("  (torch not installed: no comparison)")

    def f32(p, X, y):
        loss, g = grads(p, X, y)
        return loss, jax.tree.map(lambda a: a.astype(jnp.float32).astype(jnp.float64), g)

    bad = jax_ref.check_gradients(jax_ref.mlp_loss, f32, params, X, y, returns_loss=True)
    print(
        "  float32-rounded gradient, failing leaves:",
        sorted({r.parameter for r in bad if r.status == "failed"}),
    )


if __name__ == "__main__":
    main()
