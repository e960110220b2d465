"""How long check_gradients takes on large ReLU MLPs, after compilation.

    python benchmarks/bench_check.py

The 814k-parameter 784-1024-10 MLP (N = 64) of the issue, and a 1.01M-parameter
1000-1000-10 one, float64, both oracles. The first call compiles; the median of the next
three is the figure. Also shows that a gradient rounded to float32 fails the float64 check.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import handgrad as hg  # noqa: E402
import jax_ref  # noqa: E402


def main() -> None:
    grads = jax.jit(hg.mlp_grads)
    for D, H, C in ((784, 1024, 10), (1000, 1000, 10)):
        params = hg.init_params(jax.random.PRNGKey(0), D, H, C, dtype=jnp.float64)
        X = jax.random.normal(jax.random.PRNGKey(1), (64, D), jnp.float64)
        y = jax.random.randint(jax.random.PRNGKey(2), (64,), 0, C)
        size = sum(p.size for p in params)
        times, results = [], None
        for _ in range(4):
            t = time.perf_counter()
            results = jax_ref.check_gradients(
                jax_ref.mlp_loss, grads, params, X, y, returns_loss=True
            )
            times.append(time.perf_counter() - t)
        ok = all(r.passed for r in results)
        print(
            f"{D}-{H}-{C} ({size:,} params): first call {times[0]:.2f} s, then median "
            f"{statistics.median(times[1:]):.2f} s; all {len(results)} checks pass: {ok}"
        )

        def f32(p, X, y):
            loss, g = grads(p, X, y)
            return loss, jax.tree.map(lambda a: a.astype(jnp.float32).astype(jnp.float64), g)

        bad = jax_ref.check_gradients(jax_ref.mlp_loss, f32, params, X, y, returns_loss=True)
        print(
            "  float32-rounded gradient, failing leaves:",
            sorted({r.parameter for r in bad if not r.passed}),
        )


if __name__ == "__main__":
    main()
