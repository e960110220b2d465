"""Reports: JSON and Markdown (and PNG plots) written atomically and deterministically.

Same inputs, same bytes: no timestamps, keys in a fixed order, floats via repr.
A report's files are first written beside their targets under temporary names and only
then renamed over them (os.replace is atomic), so a crash leaves the previous report whole.
"""

from __future__ import annotations

import collections
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jax_ref.verdict import verdict

__all__ = [
    "assemble_report",
    "cell",
    "failure_lines",
    "fmt",
    "from_json",
    "function_table",
    "gradcheck_markdown",
    "group_by",
    "inconclusive_table",
    "margin",
    "mutants_markdown",
    "plot_gradcheck",
    "plot_limits",
    "replace_section",
    "status_of",
    "to_json",
    "versions",
    "write_files",
]


def replace_section(text: str, marker: str, section: str) -> str:
    """`text` (a Markdown file of sections, each opened by a marker line `<!-- name -->`;
    the part before the first marker has none) with the section of `marker` replaced by
    `section`, or `section` appended when there is none yet. `marker` "" means the head.
    Each benchmark script writes its own section and keeps the others as they are."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _is_marker(line)]
    if marker == "":
        first, end = 0, (starts[0] if starts else len(lines))
    else:
        mine = [i for i in starts if lines[i].strip() == marker]
        if not mine:
            return text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
        first = mine[0]
        end = next((i for i in starts if i > first), len(lines))
    body = section.rstrip("\n") + "\n" + ("\n" if end < len(lines) else "")
    return "".join(lines[:first]) + body + "".join(lines[end:])


def _is_marker(line: str) -> bool:
    s = line.strip()
    return s.startswith("<!-- ") and s.endswith(" -->")


def versions() -> dict[str, str]:
    """The versions a report was made with (handgrad's from its installed metadata)."""
    import platform
    from importlib import metadata

    import jax
    import jaxlib
    import numpy as np

    try:
        own = metadata.version("handgrad")
    except metadata.PackageNotFoundError:
        own = "not installed"
    return {
        "handgrad": own,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def assemble_report(seed: int, sources: list[str], checks: list[dict], ledger: list[dict]) -> dict:
    """A gradcheck report from its rows, judged by `jax_ref.verdict.verdict`: it passes
    only if no check failed, every unit was judged, and every ledger step holds."""
    v = verdict(checks)
    return {
        "passed": v.passed and all(e["passed"] for e in ledger),
        "seed": seed,
        "versions": versions(),
        "derivations": list(sources),
        "counts": v.counts(),
        "unjudged": list(v.unjudged),
        "checks": checks,
        "ledger": ledger,
    }


def _json_default(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _strict(x):
    """`x` with every non-finite float replaced by null, and each dict holding one given a
    `nonfinite` entry saying which field was which ("inf", "-inf", "nan")."""
    if hasattr(x, "item") and not hasattr(x, "__len__"):  # a numpy scalar
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        out = {k: _strict(v) for k, v in x.items()}
        odd = {k: _which(v) for k, v in x.items() if _which(v) is not None}
        return {**out, "nonfinite": odd} if odd else out
    if isinstance(x, (list, tuple)):
        return [_strict(v) for v in x]
    return x


def _which(v):
    """ "inf", "-inf" or "nan" for a non-finite number; for a list of numbers with one, the
    list of those (None where finite); else None."""
    if isinstance(v, (float, np.floating)):
        return None if math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, (list, tuple)) and any(_which(e) for e in v if not isinstance(e, list)):
        return [_which(e) if not isinstance(e, list) else None for e in v]
    return None


def to_json(data) -> str:
    """Strict JSON (no NaN or Infinity: `JSON.parse` and every parser accept it), keys in
    their order, one space of indent; `from_json` reads it back exactly."""
    return json.dumps(_strict(data), indent=1, default=_json_default, allow_nan=False) + "\n"


def from_json(text: str):
    """A report written by `to_json`, its non-finite values restored."""

    def restore(d):
        odd = d.pop("nonfinite", None)
        for k, v in (odd or {}).items():
            if isinstance(v, list):
                d[k] = [_NONFINITE[w] if w else x for x, w in zip(d[k], v)]
            elif v in _NONFINITE:
                d[k] = _NONFINITE[v]
        return d

    return json.loads(text, object_hook=restore)


def write_files(out_dir: str | os.PathLike, files: dict[str, str | bytes | Callable]) -> list[Path]:
    """Write {name: text | bytes | writer(path)} into out_dir, all or nothing: every file
    goes to a temporary name first, then each is renamed over its target."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, content in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            os.close(fd)
            tmp = Path(tmp)
            staged.append((tmp, out / name))
            if callable(content):
                content(tmp)
            elif isinstance(content, bytes):
                tmp.write_bytes(content)
            else:
                tmp.write_text(content, encoding="utf-8")
        umask = os.umask(0)
        os.umask(umask)
        for tmp, target in staged:
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a report is for reading
            os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
    return [target for _, target in staged]


def fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isinf(x) or math.isnan(x):
            return str(x)
        return "0" if x == 0 else f"{x:.2e}"
    return str(x)


def _verdict(ok: bool) -> str:
    return "✅ pass" if ok else "❌ FAIL"


def margin(c: dict) -> float:
    """A judged check's error over its tolerance (inf for a failure with no number)."""
    err, tol = c["max_rel_err"], c["tolerance"]
    if err is None or (isinstance(err, float) and math.isnan(err)):
        return math.inf if status_of(c) == "failed" else 0.0
    if tol is None or not tol > 0:
        return math.inf if err > 0 else 0.0
    return err / tol


def plot_limits(checks) -> tuple[float, float, float]:
    """(bottom, top, band) of the plot's y-axis: exact results at the bottom, the axis up
    to 10x the largest judged error/tolerance (at least 1e3), failures with no finite
    error in a band above it."""
    ratios = [margin(c) for c in checks if status_of(c) != "inconclusive"]
    top = max([1e3, *(10 * r for r in ratios if math.isfinite(r))])
    return 1e-12, top, top * 3


def _draw_points(ax, checks, columns, floor, band) -> None:
    """The scatter of plot_gradcheck: one group per oracle, dtype and status."""
    from jax_ref.verdict import ORACLES

    markers = {"autodiff": "o", "finite_difference": "^", "referee": "s"}
    colors = {"float64": "tab:blue", "float32": "tab:orange", "bfloat16": "tab:green"}
    for (oracle, dtype, status), group in group_by(
        [dict(c, _s=status_of(c)) for c in checks], ("oracle", "dtype", "_s")
    ).items():
        col = lambda c: c["function"] if c["oracle"] in ORACLES else f"contract: {c['oracle']}"  # noqa: E731
        xs = [columns.index(col(c)) + (_jitter_seed(c) % 41 - 20) / 60 for c in group]
        if status == "inconclusive":
            ax.scatter(xs, [floor * 2] * len(xs), s=14, marker="x", color="gray")
            continue
        ys = [min(max(margin(c), floor), band) for c in group]
        failed = status == "failed"
        ax.scatter(
            xs,
            ys,
            s=40 if failed else 10,
            alpha=0.9 if failed else 0.6,
            marker="X" if failed else markers.get(oracle, "D"),
            color="red" if failed else colors.get(dtype, "gray"),
            edgecolors="black" if failed else "none",
            label=f"{oracle}, {dtype}" + (" FAILED" if failed else ""),
        )


def plot_gradcheck(report: dict, path) -> None:
    """Every check's error against its tolerance, log scale: points under the line pass.
    Every result is drawn: failures in red, above the line, however far (the axis grows to
    the largest; a failure with no finite error sits in the band at the top); contract
    checks in their own columns at the right; inconclusive ones as gray crosses at the
    bottom; the verdict in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jax_ref.verdict import ORACLES

    checks = report["checks"]
    oracle_rows = [c for c in checks if c["oracle"] in ORACLES]
    columns = list(dict.fromkeys(c["function"] for c in oracle_rows))
    columns += list(
        dict.fromkeys(f"contract: {c['oracle']}" for c in checks if c not in oracle_rows)
    )
    floor, top, band = plot_limits(checks)
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    _draw_points(ax, checks, columns, floor, band)
    counts = {
        s: sum(status_of(c) == s for c in checks) for s in ("passed", "failed", "inconclusive")
    }
    ax.scatter([], [], marker="x", color="gray", label=f"inconclusive ({counts['inconclusive']})")
    ax.axhline(1.0, color="red", lw=1)
    ax.axhspan(top, band * 2, color="red", alpha=0.08)
    ax.text(len(columns) - 0.5, 1.3, "fails above this line", color="red", ha="right", fontsize=8)
    ax.text(
        len(columns) - 0.5, band, "failed, no finite error", color="red", ha="right", fontsize=7
    )
    ax.set_yscale("log")
    ax.set_ylim(floor / 2, band * 2)
    ax.set_xticks(range(len(columns)), columns, rotation=20, fontsize=8)
    ax.set_ylabel("error / tolerance (exact or < 1e-12: bottom)")
    word = "PASS" if report["passed"] else "FAIL"
    ax.set_title(
        f"{word}: {len(checks)} checks, {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['inconclusive']} inconclusive"
        + ("" if report.get("seed") is None else f" (seed {report['seed']})"),
        color="black" if report["passed"] else "red",
    )
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _jitter_seed(c: dict) -> int:
    """A deterministic small integer per check (for jitter; Python's hash is salted)."""
    key = f"{c['function']}{c['case']}{c['parameter']}{c['oracle']}"
    return sum(ord(ch) * (i + 1) for i, ch in enumerate(key))


def group_by(rows, keys) -> dict:
    """Rows grouped by the tuple of their `keys` values, in first-seen order."""
    groups: dict = collections.OrderedDict()
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def cell(x) -> str:
    """A Markdown table cell: `|` escaped, newlines folded."""
    return str(x).replace("|", "\\|").replace("\n", " ")


def status_of(c: dict) -> str:
    return c.get("status", "passed" if c["passed"] else "failed")


def _summary(report: dict, png_name: str) -> list[str]:
    """The head of gradcheck.md: the verdict in words, versions, how to read it."""
    checks, ledger = report["checks"], report["ledger"]
    counts = {
        s: sum(status_of(c) == s for c in checks) for s in ("passed", "failed", "inconclusive")
    }
    l_fail = sum(not e["passed"] for e in ledger)
    unjudged = report.get("unjudged", [])
    v = report["versions"]
    steps = f"{len(ledger) - l_fail}/{len(ledger)} ledger steps hold" if ledger else None
    return [
        "# handgrad check",
        "",
        f"**{_verdict(report['passed'])}** — of {len(checks)} checks, {counts['passed']} "
        f"passed, {counts['failed']} failed and {counts['inconclusive']} were inconclusive "
        f"(the oracle could not judge: never counted as a pass); "
        f"{len(unjudged)} outputs no oracle could judge; "
        + (steps or "no derivation ledger (rule checks)")
        + f" (seed {report['seed']}; "
        f"derivations: {', '.join(report.get('derivations', []))}).",
        "",
        "Versions: " + ", ".join(f"{k} {v[k]}" for k in v) + ".",
        "",
        "How to read it. Errors are norm-wise relative: the largest |hand − oracle| over the"
        " leaf, divided by the leaf's natural scale (see `jax_ref/tolerances.py`). Oracles:"
        " `referee` (the shipped derivations' independent spec: forward values written with"
        " `jax.nn`, gradients by `jax.grad` of it; float32 results against its float64 value"
        " under a precision budget), `autodiff` (`jax.grad` of your loss or reference),"
        " `finite_difference` (float64 central differences along random sign directions;"
        " its errors are per direction). *detects ≥* is the smallest relative error in one"
        " element that the check would have flagged: a check passes only errors below it."
        " *Inconclusive* means the oracle could not judge that leaf (a kink exactly at the"
        " point, a loss flat at its rounding resolution); the run passes only if no check"
        " failed and another oracle judged every such leaf. Rule checks (`handgrad check"
        " FILE.py`) add contract checks, named in the oracle column: `primal` (the rule's"
        " output is f's), `structure` (cotangent trees, shapes, dtypes), `jit`, `vmap`,"
        " `composed` (the rule inside a larger loss under `jax.grad`), `second_order`;"
        " an inconclusive contract check is not judged either.",
        "",
        f"![error against tolerance]({png_name})",
        "",
    ]


def _tolerance_cell(rows: list[dict], worst: dict) -> str:
    """The worst row's tolerance, and any tolerance a caller set (always visible)."""
    text = fmt(worst["tolerance"])
    set_ = sorted({r.get("tolerance_set") for r in rows if r.get("tolerance_set")})
    return text + (f" ⚠️ {cell('; '.join(set_))}" if set_ else "")


def function_table(rows: list[dict], session: bool = False) -> list[str]:
    """One function's (or test's) results, a row per (parameter, dtype, oracle); in a test
    session's report, hypothesis's aggregated rows count their examples."""
    head = "| parameter | dtype | oracle | checks | passed | failed | inconclusive |"
    head += " worst rel err | its tolerance | detects ≥ | worst case |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (param, dtype, oracle), g in group_by(rows, ("parameter", "dtype", "oracle")).items():
        judged = [c for c in g if status_of(c) != "inconclusive"]
        worst = max(judged or g, key=margin)
        n = dict.fromkeys(("passed", "failed", "inconclusive"), 0)
        for c in g:
            for s, k in (c.get("statuses") or {status_of(c): 1}).items():
                n[s] += k
        det = max((c.get("detectable_rel_err", math.nan) for c in judged), default=math.nan)
        case = worst["case"]
        if session and worst.get("example") in ("final", "aggregated"):
            case += " (final)" if worst["example"] == "final" else ""
        lines.append(
            f"| {cell(param)} | {dtype} | {oracle} | {sum(n.values())} | {n['passed']} | "
            f"{n['failed'] or ''}{' ❌' if n['failed'] else ''} | "
            f"{n['inconclusive'] or ''} | {fmt(worst['max_rel_err'])} | "
            f"{_tolerance_cell(g, worst)} | {fmt(det)} | {cell(case)} |"
        )
    return [*lines, ""]


def _below_resolution_lines(rows: list[dict]) -> list[str]:
    """The referee comparisons set apart: values wholly below their scale's rounding."""
    if not rows:
        return []
    lines = [
        "## Set apart: values below the resolution of their scale",
        "",
        "Within tolerance, but these comparisons could not have seen a 100 % error: the"
        " referee's values sit wholly below the rounding of the scale they are computed on,"
        " so no float computation resolves them. Not counted as checks.",
        "",
        "| function | parameter | case | value at the worst element | detects ≥ |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {cell(c['function'])} | {cell(c['parameter'])} | {cell(c['case'])} | "
        f"{fmt(abs(c['want']) if c['want'] is not None else None)} | "
        f"{fmt(c['detectable_rel_err'])} |"
        for c in rows
    ]
    return [*lines, ""]


def _where(c: dict) -> str:
    idx = c.get("worst_index") or []
    kind = "direction" if c.get("index_kind") == "direction" else "element"
    return f"{kind} {list(idx)}" if idx else ("-" if c["oracle"] not in _VALUED else "(scalar)")


def _value(c: dict, key: str) -> str:
    """A failed result's value (hand or oracle's) at its worst place; "-" for a contract
    check that compares no values (structure)."""
    return "-" if c["oracle"] == "structure" else fmt(c.get(key))


_VALUED = ("autodiff", "finite_difference", "referee", "primal", "jit", "vmap", "composed")


def failure_lines(checks: list[dict]) -> list[str]:
    """Every failed check in full: where, what failed, its worst element (or direction),
    the hand value and the oracle's there, the error against its tolerance, and why."""
    failed = [c for c in checks if status_of(c) == "failed"]
    if not failed:
        return []
    lines = [
        "## What failed, and why",
        "",
        "| function | case | parameter | check | worst at | hand | oracle's | rel err |"
        " tolerance | why |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {cell(c['function'])} | {cell(c['case'])} | {cell(c['parameter'])} | {c['oracle']} |"
        f" {_where(c)} | {_value(c, 'got')} | {_value(c, 'want')} |"
        f" {fmt(c['max_rel_err'])} | {_tolerance_cell([c], c)} | {cell(c['note'] or '-')} |"
        for c in failed
    ]
    return [*lines, ""]


def inconclusive_table(checks: list[dict]) -> list[str]:
    reasons = collections.Counter(
        (c["derivation"], c["oracle"], c["note"].split(":")[0])
        for c in checks
        if status_of(c) == "inconclusive"
    )
    if not reasons:
        return []
    lines = [
        "## Why some checks were inconclusive",
        "",
        "| derivation | oracle | reason | checks |",
        "|---|---|---|---:|",
    ]
    lines += [f"| {d} | {o} | {cell(why)} | {n} |" for (d, o, why), n in reasons.items()]
    return [*lines, ""]


def _ledger_lines(ledger: list[dict]) -> list[str]:
    lines = [
        "## The derivation ledger",
        "",
        "Each step of each derivation, evaluated in float64 on random inputs: its error against"
        " autodiff, against the previous step of its chain (for chains of equalities), its"
        " shape against the step's shape line, and whether it stays finite when the inputs"
        " are scaled to logits ~1e4. The last step of every chain is the shipped function.",
        "",
        "| derivation | chain | step | equation | shape | vs autodiff | vs previous |"
        " finite at 1e4 | verdict |",
        "|---|---|---|---|---|---:|---:|---|---|",
    ]
    for e in ledger:
        actual = ", ".join(str(tuple(s)) for s in e["actual_shape"])
        shape = e["shape"] + ("" if e["shape_ok"] else f" ≠ {actual}")
        lines.append(
            f"| {e['derivation']} | {e['chain']} | {cell(e['step'])} | {cell(e['equation'])} |"
            f" {cell(shape)} | {fmt(e['rel_err'])} | {fmt(e['vs_previous'])} |"
            f" {'yes' if e['extreme_finite'] else '**no** (NaN/inf)'} | {_verdict(e['passed'])} |"
        )
    unstable = [e for e in ledger if not e["extreme_finite"]]
    if unstable:
        lines += [
            "",
            "Forms that are exact mathematics but break at extreme logits: "
            + ", ".join(f"`{e['chain']}: {e['step']}`" for e in unstable)
            + ". That is why handgrad ships the final forms.",
        ]
    return lines


def gradcheck_markdown(report: dict, png_name: str = "gradcheck.png") -> str:
    """gradcheck.md: the verdict, a table per function, why checks were inconclusive,
    and the derivation ledger."""
    lines = _summary(report, png_name)
    unjudged = report.get("unjudged", [])
    if unjudged:
        lines += ["**Not judged by any oracle:**", ""] + [f"- {cell(u)}" for u in unjudged] + [""]
    for (derivation, function), rows in group_by(
        report["checks"], ("derivation", "function")
    ).items():
        lines += [f"## `{derivation}`: `{function}`", "", *function_table(rows)]
    lines += failure_lines(report["checks"])
    lines += _below_resolution_lines(report.get("below_resolution", []))
    lines += inconclusive_table(report["checks"])
    if report["ledger"]:
        lines += _ledger_lines(report["ledger"])
    return "\n".join(lines) + "\n"


def mutants_markdown(report: dict) -> str:
    errors = report.get("harness_errors", 0)
    ok = report["killed"] == report["total"] and not errors
    lines = [
        "# handgrad mutants",
        "",
        f"**{report['killed']}/{report['total']} mutants killed**, {errors} harness errors "
        f"({_verdict(ok)}; a survivor is a hole in the tests).",
        "",
        "Each mutant is a plausible mistake: the shipped functions with one piece swapped for"
        " a wrong one. Each column is a property the test suite checks; **kills** means that"
        " property raised on some case of the sweep (float64). A kill counts only as an"
        " AssertionError or the error class the mutant's entry names; any other exception"
        " is a harness error and fails the run. *must* marks the kills the tests require.",
        "",
    ]
    for derivation, props in report["properties"].items():
        rows = [m for m in report["mutants"] if m["derivation"] == derivation]
        if not rows:
            continue
        lines += [
            f"## `{derivation}`",
            "",
            "| mutant | mistake | revealed by | " + " | ".join(props) + " |",
            "|---|---|---|" + "---|" * len(props),
        ]
        for m in rows:
            cells = [
                ("**kills**" if p in m["killed_by"] else "—")
                + (" *must*" if p in m["must_kill"] else "")
                for p in props
            ]
            lines.append(
                f"| `{m['name']}` | {cell(m['description'])} | {cell(m['reveals'])} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    lines += ["First killing case per mutant:", ""]
    for m in report["mutants"]:
        first = m["first_kill"] or "**survived**"
        lines.append(f"- `{m['derivation']}: {m['name']}`: {first}")
        for prop, err in m.get("harness_errors", {}).items():
            lines.append(f"  - harness error in `{prop}`: {err}")
    return "\n".join(lines) + "\n"
