"""Flash attention's hand backward against autodiff of the naive forward: memory and time.

    python benchmarks/bench_attention.py [--out reports/benchmarks.md] [--reps R] [--quick]
                                         [--run-n N]

The gradient of ⟨dO, O(Q, K, V)⟩ in (Q, K, V), one head, d = 64, float32: compiled
temporary memory (`memory_analysis()`, exact) for N = M from 1,024 to 16,384 and the flash
gradient at 131,072; wall time at N = 4,096 (medians of interleaved rounds); the flash
gradient run for real at `--run-n`. With `--out`, its section of that file is replaced.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grad import machine

import handgrad as hg
from handgrad.attn import DEFAULT_BLOCK

MARKER = "<!-- bench_attention -->"
D = 64
GIB = 2.0**30


def _flash_loss(Q, K, V, dO):
    return jnp.vdot(dO, hg.flash_attention(Q, K, V))


def _naive_loss(Q, K, V, dO):
    return jnp.vdot(dO, hg.attention(Q, K, V))


FLASH = jax.jit(jax.grad(_flash_loss, argnums=(0, 1, 2)))
AUTODIFF = jax.jit(jax.grad(_naive_loss, argnums=(0, 1, 2)))


def _shapes(N):
    s = jax.ShapeDtypeStruct((N, D), jnp.float32)
    return s, s, s, s


def temp_bytes(fn, N) -> int:
    return int(fn.lower(*_shapes(N)).compile().memory_analysis().temp_size_in_bytes)


def bench_memory(ns) -> list[dict]:
    rows = []
    for N in ns:
        flash, naive = temp_bytes(FLASH, N), temp_bytes(AUTODIFF, N)
        rows.append({"N": N, "flash_bytes": flash, "autodiff_bytes": naive, "ratio": flash / naive})
        print(f"N={N}: flash {flash / 2**20:.1f} MiB, autodiff {naive / 2**20:.1f} MiB", flush=True)
    return rows


def _inputs(N, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return [jax.random.normal(ki, (N, D), jnp.float32) for ki in k]


def bench_time(N, reps) -> dict:
    args = _inputs(N)
    fns = {"flash": FLASH, "autodiff": AUTODIFF}
    for f in fns.values():
        jax.block_until_ready(f(*args))  # compile and warm
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[k].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["flash"], times["autodiff"])]
    return {
        "N": N,
        "reps": reps,
        "flash_s": statistics.median(times["flash"]),
        "autodiff_s": statistics.median(times["autodiff"]),
        "ratio": statistics.median(ratios),
    }


def run_for_real(N) -> dict:
    args = _inputs(N)
    t = time.perf_counter()
    grads = jax.block_until_ready(FLASH(*args))
    seconds = time.perf_counter() - t
    return {
        "N": N,
        "seconds_with_compile": seconds,
        "finite": bool(all(jnp.isfinite(g).all() for g in grads)),
        "temp_bytes": temp_bytes(FLASH, N),
    }


def plot(rows, big, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["N"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.loglog(
        ns,
        [r["autodiff_bytes"] / 2**20 for r in rows],
        "o-",
        color="tab:orange",
        label="autodiff of the naive forward (stores P)",
    )
    ax.loglog(
        [*ns, big["N"]],
        [*(r["flash_bytes"] / 2**20 for r in rows), big["flash_bytes"] / 2**20],
        "s-",
        color="tab:blue",
        label=f"flash_attention, hand backward (B = {DEFAULT_BLOCK})",
    )
    ax.set_xlabel("sequence length N = M (one head, d = 64, float32)")
    ax.set_ylabel("compiled temporary memory of the gradient (MiB)")
    ax.set_title("Gradient memory: O(N·M) for autodiff, O(N·B) for the hand backward")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _mark(ok: bool) -> str:
    return "✅ met" if ok else "❌ missed"


def markdown(rows, big, timing, real, png) -> str:
    at = {r["N"]: r for r in rows}
    r8, r16 = at.get(8192), at.get(16384)
    lines = [
        MARKER,
        "",
        "## Attention: flash hand backward vs autodiff of the naive forward",
        "",
        f"`python benchmarks/bench_attention.py`: the gradient of ⟨dO, O⟩ in (Q, K, V), one"
        f" head, d = {D}, float32, N = M; flash = `jax.grad` through `handgrad.flash_attention`"
        f" (its registered hand backward, key blocks of B = {DEFAULT_BLOCK}); autodiff ="
        " `jax.grad` of `handgrad.attention` (the naive forward, which keeps P). Memory is the"
        " compiled temporary memory from XLA's `memory_analysis()`: exact, nothing allocated.",
        "",
        f"![gradient memory against N]({png})",
        "",
        "| N | flash MiB | autodiff MiB | flash / autodiff |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['N']:,} | {r['flash_bytes'] / 2**20:.1f} | {r['autodiff_bytes'] / 2**20:.1f} |"
            f" {r['ratio']:.4f} (1/{1 / r['ratio']:.0f}) |"
        )
    lines.append(
        f"| {big['N']:,} | {big['flash_bytes'] / 2**20:.1f} | {big['autodiff_bytes'] / 2**20:.0f}"
        f" (compiled only) | {big['flash_bytes'] / big['autodiff_bytes']:.5f} |"
    )
    lines += ["", "Targets:", ""]
    if r8:
        lines.append(
            f"- memory ratio at N = 8,192: 1/{1 / r8['ratio']:.0f} (target ≤ 1/16):"
            f" {_mark(r8['ratio'] <= 1 / 16)};"
        )
    if r8 and r16:
        growth = r16["flash_bytes"] / r8["flash_bytes"]
        lines.append(
            f"- flash growth from N = 8,192 to 16,384: {growth:.2f}x (target ≤ 2.5x, O(N)):"
            f" {_mark(growth <= 2.5)};"
        )
    lines.append(
        f"- flash at N = {big['N']:,}: {big['flash_bytes'] / GIB:.3f} GiB of temporary memory"
        f" (target < 1 GiB): {_mark(big['flash_bytes'] < GIB)}; autodiff would need"
        f" {big['autodiff_bytes'] / GIB:.0f} GiB;"
    )
    lines.append(
        f"- gradient wall time at N = {timing['N']:,}: flash {timing['flash_s'] * 1e3:.0f} ms,"
        f" autodiff {timing['autodiff_s'] * 1e3:.0f} ms, ratio {timing['ratio']:.2f} (median of"
        f" {timing['reps']} paired rounds; target ≤ 0.6): {_mark(timing['ratio'] <= 0.6)}."
    )
    lines += [
        "",
        f"Run for real: the flash gradient at N = {real['N']:,} took"
        f" {real['seconds_with_compile']:.1f} s (compilation included) with"
        f" {real['temp_bytes'] / 2**20:.0f} MiB of temporary memory; every gradient entry"
        f" {'is finite' if real['finite'] else 'is NOT finite'}. Autodiff of the naive"
        f" forward would need {5 * real['N'] ** 2 * 4 / GIB:.0f} GiB (5 N×M float32 arrays) there.",
        "",
    ]
    return "\n".join(lines)


def write_section(out: Path, section: str, png_writer) -> None:
    from jax_ref.report import replace_section, write_files

    old = out.read_text() if out.exists() else "# Benchmarks\n"
    png = "attention_memory.png"
    write_files(out.parent, {out.name: replace_section(old, MARKER, section), png: png_writer})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", help="the Markdown report to put the section in")
    ap.add_argument("--quick", action="store_true", help="N up to 4,096; run at 8,192")
    ap.add_argument("--run-n", type=int, default=32768, help="N of the real run")
    args = ap.parse_args(argv)
    print(machine(), flush=True)
    ns = [1024, 2048, 4096] if args.quick else [1024, 2048, 4096, 8192, 16384]
    rows = bench_memory(ns)
    big_n = 131072
    big = {"N": big_n, "flash_bytes": temp_bytes(FLASH, big_n)}
    try:
        big["autodiff_bytes"] = temp_bytes(AUTODIFF, big_n)
    except Exception:  # too big even to compile: the estimate of the docstring
        big["autodiff_bytes"] = 5 * big_n**2 * 4
    print(f"N={big_n}: flash {big['flash_bytes'] / GIB:.3f} GiB", flush=True)
    timing = bench_time(4096, args.reps)
    print(f"time at 4096: ratio {timing['ratio']:.3f}", flush=True)
    real = run_for_real(8192 if args.quick else args.run_n)
    print(f"real run: {real}", flush=True)
    section = markdown(rows, big, timing, real, "attention_memory.png")
    print(section)
    if args.out:
        write_section(Path(args.out), section, lambda p: plot(rows, big, p))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
