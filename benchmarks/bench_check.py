"""How long check_gradients takes on a large ReLU MLP, beside torch's gradcheck fast mode.

    python benchmarks/bench_check.py [--out reports/benchmarks.md] [--rounds R]

The 814,090-parameter 784-1024-10 MLP (N = 64), float64: finite differences alone, and
both oracles; `torch.autograd.gradcheck(fast_mode=True)` when torch is installed (not a
dependency). Interleaved rounds, compilation left out, medians; the ratio is the median
of per-round ratios. Also shows that a gradient rounded to float32 fails the check.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

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


MARKER = "<!-- bench_check -->"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", help="the Markdown report to put the section in")
    args = ap.parse_args(argv)
    m = measure(args.rounds)
    if args.out:
        from jax_ref.report import replace_section, write_files

        out = Path(args.out)
        old = out.read_text() if out.exists() else "# Benchmarks\n"
        write_files(out.parent, {out.name: replace_section(old, MARKER, markdown(m))})
        print(f"wrote {out}")
    return 0


def markdown(m: dict) -> str:
    rows = [
        f"| {name} | {t * 1e3:.0f} | {m['ratios'].get(name, float('nan')):.2f} |"
        for name, t in m["times"].items()
    ]
    fd = m["ratios"].get(FD)
    verdict = (
        "(torch not installed here: no comparison)"
        if fd is None
        else f"finite differences alone / torch fast mode = **{fd:.2f}** (target ≤ 1.00: "
        f"{'✅ met' if fd <= 1 else '❌ missed'})"
    )
    return "\n".join(
        [
            MARKER,
            "",
            "## Checking a big network: handgrad's finite differences vs torch's fast mode",
            "",
            f"`python benchmarks/bench_check.py --rounds {m['rounds']}`: the 784-1024-10 ReLU"
            f" MLP ({m['size']:,} parameters, N = {N}, float64), one process, {m['rounds']}"
            " interleaved rounds after a compiling one; times are medians, ratios the median"
            " of per-round ratios against torch. torch `gradcheck(fast_mode=True)` checks one"
            " random direction per input with one central difference; handgrad gives each of"
            " the 4 leaves its own verdict from 2 directions at 3 step sizes, kink detection"
            f" and a rounding-noise estimate. Machine: {m['machine']}.",
            "",
            "| check | median ms | / torch fast mode |",
            "|---|---:|---:|",
            *rows,
            "",
            f"Result: {verdict}.",
            "",
            "What handgrad's finite differences can see here (`detectable_rel_err`, the"
            " smallest relative error in one element of the leaf that would fail the check):"
            f" {m['detects']}. A gradient rounded to float32 fails in the leaves"
            f" {', '.join(m['float32_failing'])}.",
            "",
            "How: the loss along a line through a big leaf is evaluated by `jax_ref.affine`,"
            " which computes the part of the loss that is polynomial in the step (here X·W1"
            " and |W1|²) once and runs the rest point by point; directions are int8 signs;"
            " a big leaf starts 16x closer, so its stencil rarely crosses a ReLU kink.",
            "",
        ]
    )


FD = "handgrad, finite differences alone"
BOTH = "handgrad, both oracles"
TORCH = "torch gradcheck(fast_mode=True)"


def measure(rounds: int) -> dict:
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

    runs = {FD: fd_only, BOTH: both}
    torch_run = _torch_check(params, X, y)
    if torch_run is not None:
        runs[TORCH] = torch_run
    detects = ""
    times = {name: [] for name in runs}
    for r in range(rounds + 1):
        for name, fn in runs.items():
            t = time.perf_counter()
            out = fn()
            if r:  # round 0 compiles
                times[name].append(time.perf_counter() - t)
            if name == FD and r == rounds:
                statuses = sorted({x.status for x in out})
                detects = ", ".join(
                    f"{x.parameter} {x.detectable_rel_err:.1g}"
                    for x in out
                    if x.oracle == "finite_difference"
                )
                print(f"  {name}: statuses {statuses}; detects >= {detects}")
    print(f"784-1024-10 MLP ({size:,} parameters, N = {N}, float64), median of {rounds} rounds:")
    for name, ts in times.items():
        print(f"  {name:38s} {statistics.median(ts):.3f} s")
    ratios = {}
    if torch_run is not None:
        ref = times[TORCH]
        for name in times:
            ratios[name] = statistics.median(a / b for a, b in zip(times[name], ref))
        for name in (FD, BOTH):
            print(
                f"  {name} / torch fast mode: {ratios[name]:.2f} (target <= 1.00: "
                f"{'met' if ratios[name] <= 1 else 'MISSED'})"
            )
    else:
        print("  (torch not installed: no comparison)")

    def f32(p, X, y):
        loss, g = grads(p, X, y)
        return loss, jax.tree.map(lambda a: a.astype(jnp.float32).astype(jnp.float64), g)

    bad = jax_ref.check_gradients(jax_ref.mlp_loss, f32, params, X, y, returns_loss=True)
    failing = sorted({r.parameter for r in bad if r.status == "failed"})
    print("  float32-rounded gradient, failing leaves:", failing)
    return {
        "rounds": rounds,
        "size": size,
        "times": {name: statistics.median(ts) for name, ts in times.items()},
        "ratios": ratios,
        "detects": detects,
        "float32_failing": failing,
        "machine": f"{platform.machine()}, {_cores()} cores, JAX {jax.__version__} on "
        f"{jax.default_backend()}, Python {platform.python_version()}",
    }


def _cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
