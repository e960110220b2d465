"""Fused linear cross-entropy's hand backward against autodiff of the plain loss.

    python benchmarks/bench_linear_ce.py [--out reports/benchmarks.md] [--reps R] [--quick]

`jax.grad` of the mean cross-entropy of softmax(X·W) in (X, W), float32: compiled temporary
memory (`memory_analysis()`, exact) for N from 1,024 to 32,768 and V from 32,768 to
262,144 at H = 1,024, against autodiff of the plain loss (and optax's and tokamax's when
installed); wall time at N = 2,048, H = 256, V = 16,384 (medians of paired rounds); the
largest size compiled, then run once at a small H, its loss against float64 numpy.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grad import machine

import handgrad as hg

MARKER = "<!-- bench_linear_ce -->"
PNG = "linear_ce_memory.png"
H = 1024
GIB, MIB = 2.0**30, 2.0**20


def _fused(X, W, y):
    return hg.linear_cross_entropy(X, W, y)


def _plain(X, W, y):
    z = jnp.matmul(X, W, precision="highest")
    return jnp.mean(jax.nn.logsumexp(z, axis=1) - jnp.take_along_axis(z, y[:, None], 1)[:, 0])


def _optax(X, W, y):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(X @ W, y).mean()


def _tokamax(X, W, y):  # tokamax's XLA implementation: it materializes the logits
    import tokamax  # its signature: (x (B, H), labels (B,), weights (H, V), *, reduction, ...)

    return tokamax.linear_softmax_cross_entropy_loss(
        X, y, W, reduction="mean", implementation="xla"
    )


def losses() -> dict:
    """{name: loss(X, W, y)}: ours, autodiff of the plain loss, and the installed others."""
    out = {"fused (hand backward)": _fused, "autodiff of the plain loss": _plain}
    if importlib.util.find_spec("optax"):
        out["optax softmax_cross_entropy_with_integer_labels"] = _optax
    if importlib.util.find_spec("tokamax"):
        out["tokamax (XLA)"] = _tokamax
    return out


def _shapes(N, H_, V):
    f = jnp.float32
    return (
        jax.ShapeDtypeStruct((N, H_), f),
        jax.ShapeDtypeStruct((H_, V), f),
        jax.ShapeDtypeStruct((N,), jnp.int32),
    )


def temp_bytes(loss, N, V, H_=H) -> int:
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return int(grad.lower(*_shapes(N, H_, V)).compile().memory_analysis().temp_size_in_bytes)


def bench_memory(ns, vs) -> list[dict]:
    rows = []
    for N in ns:
        for V in vs:
            row = {"N": N, "V": V}
            for name, loss in losses().items():
                row[name] = temp_bytes(loss, N, V)
            rows.append(row)
            print(", ".join(f"{k} {v / MIB:.1f}" for k, v in row.items() if k not in "NV"), N, V)
    return rows


def bench_time(N, H_, V, reps) -> dict:
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(N, H_)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(H_, V)) / np.sqrt(H_), jnp.float32)
    y = jnp.asarray(rng.integers(0, V, N), jnp.int32)
    fns = {k: jax.jit(jax.value_and_grad(f, argnums=(0, 1))) for k, f in losses().items()}
    for f in fns.values():
        jax.block_until_ready(f(X, W, y))  # compile and warm
    times = {k: [] for k in fns}
    for _ in range(reps):  # paired rounds: each round runs every function once
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(X, W, y))
            times[k].append(time.perf_counter() - t)
    base = times["autodiff of the plain loss"]
    return {
        "N": N,
        "H": H_,
        "V": V,
        "reps": reps,
        "seconds": {k: statistics.median(t) for k, t in times.items()},
        "ratio": {k: statistics.median(a / b for a, b in zip(t, base)) for k, t in times.items()},
    }


def reference_loss(X, W, y, rows=4096, cols=8192) -> float:
    """The mean cross-entropy in float64 numpy, blockwise (rows × cols logits at a time)."""
    X, W = np.asarray(X, np.float64), np.asarray(W, np.float64)
    N, V = X.shape[0], W.shape[1]
    total = 0.0
    for i in range(0, N, rows):
        m = np.full(min(rows, N - i), -np.inf)
        s = np.zeros_like(m)
        for j in range(0, V, cols):
            z = X[i : i + rows] @ W[:, j : j + cols]
            m_new = np.maximum(m, z.max(axis=1))
            s = s * np.exp(m - m_new) + np.exp(z - m_new[:, None]).sum(axis=1)
            m = m_new
        target = np.einsum("ih,hi->i", X[i : i + rows], W[:, y[i : i + rows]])
        total += float((m + np.log(s) - target).sum())
    return total / N


def run_big(N, V, H_small) -> dict:
    """The size autodiff cannot hold: compiled at H = 1,024 (memory stated), run at H_small,
    its loss against float64 numpy."""
    out = {"N": N, "V": V, "H_compiled": H, "H_run": H_small}
    out["fused_bytes"] = temp_bytes(_fused, N, V)
    out["autodiff_bytes"] = temp_bytes(_plain, N, V)
    rng = np.random.default_rng(1)
    X = jnp.asarray(rng.normal(size=(N, H_small)), jnp.float32)
    W = jnp.asarray(rng.normal(size=(H_small, V)) / np.sqrt(H_small), jnp.float32)
    y = np.asarray(rng.integers(0, V, N), np.int32)
    grad = jax.jit(jax.value_and_grad(_fused, argnums=(0, 1)))
    t = time.perf_counter()
    loss, (dX, dW) = jax.block_until_ready(grad(X, W, jnp.asarray(y)))
    out["seconds_with_compile"] = time.perf_counter() - t
    out["run_bytes"] = temp_bytes(_fused, N, V, H_small)
    out["finite"] = bool(jnp.isfinite(dX).all() and jnp.isfinite(dW).all())
    out["loss"] = float(loss)
    out["loss_float64"] = reference_loss(X, W, y)
    out["rel_err"] = abs(out["loss"] - out["loss_float64"]) / abs(out["loss_float64"])
    print(out, flush=True)
    return out


def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    names = [k for k in rows[0] if k not in ("N", "V")]
    styles = {names[0]: ("tab:blue", "s-"), names[1]: ("tab:orange", "o--")}
    for ax, (key, other) in zip(axes, (("V", "N"), ("N", "V"))):
        for fixed in sorted({r[other] for r in rows}):
            sel = [r for r in rows if r[other] == fixed]
            xs = [r[key] for r in sel]
            for name in names:
                color, style = styles.get(name, ("tab:green", "^:"))
                ax.loglog(
                    xs,
                    [r[name] / MIB for r in sel],
                    style,
                    color=color,
                    alpha=0.8,
                    label=f"{name}, {other} = {fixed:,}",
                )
        ax.set_xlabel(f"{'vocabulary V' if key == 'V' else 'tokens N'} (H = {H:,}, float32)")
        ax.set_ylabel("compiled temporary memory of jax.grad (MiB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=5, ncol=2)
    axes[0].set_title("against V: flat for the hand backward")
    axes[1].set_title("against N: linear at most")
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _mark(ok: bool) -> str:
    return "✅ met" if ok else "❌ missed"


def _memory_table(rows) -> list[str]:
    names = [k for k in rows[0] if k not in ("N", "V")]
    lines = [
        "| N | V | " + " | ".join(f"{n} MiB" for n in names) + " | fused / autodiff |",
        "|---:|---:|" + "---:|" * len(names) + "---:|",
    ]
    for r in rows:
        ratio = r[names[0]] / r[names[1]]
        lines.append(
            f"| {r['N']:,} | {r['V']:,} | "
            + " | ".join(f"{r[n] / MIB:,.1f}" for n in names)
            + f" | 1/{1 / ratio:,.0f} |"
        )
    return lines


def _targets(rows, timing, big) -> list[str]:
    fused, plain = "fused (hand backward)", "autodiff of the plain loss"
    at = {(r["N"], r["V"]): r for r in rows}
    lines = ["", "Targets:", ""]
    r = at.get((8192, 131072))
    if r:
        ratio = r[fused] / r[plain]
        lines.append(
            f"- temporary memory at N = 8,192, H = 1,024, V = 131,072: {r[fused] / MIB:.1f} MiB"
            f" against autodiff's {r[plain] / GIB:.1f} GiB, 1/{1 / ratio:.0f} (target ≤ 1/128):"
            f" {_mark(ratio <= 1 / 128)};"
        )
    ns, vs = sorted({r["N"] for r in rows}), sorted({r["V"] for r in rows})
    flat = max(at[(n, vs[-1])][fused] / at[(n, vs[0])][fused] for n in ns)
    lines.append(
        f"- flat in V: from V = {vs[0]:,} to {vs[-1]:,} the hand backward's memory grows at"
        f" most {flat:.2f}x at any N (autodiff's {vs[-1] // vs[0]}x; target: flat):"
        f" {_mark(flat <= 1.1)};"
    )
    lin = max(at[(ns[-1], v)][fused] / at[(ns[0], v)][fused] for v in vs)
    lines.append(
        f"- at most linear in N: from N = {ns[0]:,} to {ns[-1]:,} ({ns[-1] // ns[0]}x) it grows"
        f" at most {lin:.2f}x at any V: {_mark(lin <= ns[-1] / ns[0])};"
    )
    finite = "finite" if big["finite"] else "NOT finite"
    close = big["rel_err"] <= 1e-5
    t = timing
    ratio = t["ratio"][fused]
    lines.append(
        f"- time of value_and_grad at N = {t['N']:,}, H = {t['H']}, V = {t['V']:,}: fused"
        f" {t['seconds'][fused] * 1e3:.0f} ms, autodiff {t['seconds'][plain] * 1e3:.0f} ms,"
        f" ratio {ratio:.2f} (median of {t['reps']} paired rounds; target ≤ 1.0):"
        f" {_mark(ratio <= 1.0)};"
    )
    lines.append(
        f"- beyond this machine: N = {big['N']:,}, V = {big['V']:,}, H = {big['H_compiled']:,}"
        f" compiles to {big['fused_bytes'] / MIB:.0f} MiB of temporary memory; autodiff"
        f" compiles to {big['autodiff_bytes'] / GIB:.0f} GiB (the logits alone are"
        f" {big['N'] * big['V'] * 4 / GIB:.0f} GiB; this machine has 24). Run once at H ="
        f" {big['H_run']}: {big['seconds_with_compile']:.1f} s with compilation,"
        f" {big['run_bytes'] / MIB:.0f} MiB, gradients {finite},"
        f" loss {big['loss']:.7g} against float64 numpy's {big['loss_float64']:.7g} (relative"
        f" error {big['rel_err']:.1e}; float32's rounding: ≤ 1e-5): {_mark(close)}."
    )
    return lines


def markdown(rows, timing, big) -> str:
    others = [
        k for k in losses() if k not in ("fused (hand backward)", "autodiff of the plain loss")
    ]
    lines = [
        MARKER,
        "",
        "## Linear cross-entropy: fused hand backward vs autodiff of the plain loss",
        "",
        "`python benchmarks/bench_linear_ce.py`: `jax.grad` in (X, W) of the mean"
        " cross-entropy of softmax(X·W) against integer labels, float32. fused ="
        " `handgrad.linear_cross_entropy` (its hand backward: vocabulary blocks of 4,096 and"
        " 2^21 logits a block, or one pass when V ≤ 16,384); autodiff = `jax.grad` of the"
        " plain loss, which stores the N×V logits and their gradient."
        + (
            f" Also measured: {', '.join(others)}."
            if others
            else " optax and tokamax are not installed here: their columns appear when they are."
        )
        + " Memory is the compiled temporary memory from XLA's `memory_analysis()`: exact,"
        " nothing allocated (the inputs, the loss and the gradients are not temporary).",
        "",
        f"![temporary memory against V and N]({PNG})",
        "",
        *_memory_table(rows),
        *_targets(rows, timing, big),
        "",
    ]
    return "\n".join(lines)


def write_section(out: Path, section: str, png_writer) -> None:
    from jax_ref.report import replace_section, write_files

    old = out.read_text() if out.exists() else "# Benchmarks\n"
    write_files(out.parent, {out.name: replace_section(old, MARKER, section), PNG: png_writer})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", help="the Markdown report to put the section in")
    ap.add_argument("--quick", action="store_true", help="N up to 8,192, V up to 131,072")
    ap.add_argument("--run-h", type=int, default=16, help="H of the run at the largest size")
    args = ap.parse_args(argv)
    print(machine(), flush=True)
    ns = [1024, 2048, 8192] if args.quick else [1024, 2048, 4096, 8192, 16384, 32768]
    vs = [32768, 131072] if args.quick else [32768, 65536, 131072, 262144]
    rows = bench_memory(ns, vs)
    timing = bench_time(2048, 256, 16384, args.reps)
    print(f"time: {timing}", flush=True)
    big = run_big(32768, 262144, args.run_h)
    section = markdown(rows, timing, big)
    print(section)
    if args.out:
        write_section(Path(args.out), section, lambda p: plot(rows, p))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
