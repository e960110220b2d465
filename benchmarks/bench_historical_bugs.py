"""handgrad's default rule checks against `jax.test_util.check_grads` on real derivative
bugs from public trackers (the catalogue in tests/historical_bugs.py).

    python benchmarks/bench_historical_bugs.py [--out reports]

For each entry, both checks on the buggy rule and on the fixed one, at the point where the
bug shows: handgrad's `check_vjp` / `check_jvp` with default settings (verdict: failed,
passed or inconclusive), and `check_grads(f, primals, order, modes=[rev] or [fwd])`
(raises or not). Writes historical_bugs.json and historical_bugs.md atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_grad import machine  # noqa: E402
from historical_bugs import bugs  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import jax_ref as jr  # noqa: E402
from jax_ref.report import cell, to_json, write_files  # noqa: E402
from jax_ref.verdict import verdict  # noqa: E402


def handgrad(bug, fn) -> tuple[str, str]:
    """(failed | passed | inconclusive, the first failed or unjudged result's note)."""
    check = jr.check_vjp if bug.kind == "vjp" else jr.check_jvp
    res = check(fn, *bug.primals, order=bug.order)
    v = verdict(res)
    word = "failed" if v.failed else ("passed" if v.passed else "inconclusive")
    first = v.failed[0] if v.failed else next((r for r in res if r.status != "passed"), None)
    return word, "" if first is None else first.describe()


def anchor(bug, fn) -> str:
    """check_grads' verdict: failed if it raises, passed if not."""
    modes = ["rev"] if bug.kind == "vjp" else ["fwd"]
    try:
        check_grads(fn, bug.primals, order=bug.order, modes=modes)
    except Exception:  # check_grads reports a wrong gradient by raising
        return "failed"
    return "passed"


def outcome(on_buggy: str, on_fixed: str) -> str:
    """What a checker did with one bug: caught, missed, false alarm, inconclusive."""
    if on_fixed == "failed":
        return "false alarm"
    if on_buggy == "failed":
        return "caught" if on_fixed == "passed" else "caught (fixed: inconclusive)"
    return "inconclusive" if on_buggy == "inconclusive" else "missed"


def rows() -> list[dict]:
    out = []
    for b in bugs():
        t = time.perf_counter()
        hb, why_b = handgrad(b, b.buggy)
        hc, why_c = handgrad(b, b.correct)
        ab, ac = anchor(b, b.buggy), anchor(b, b.correct)
        out.append(
            dict(
                name=b.name,
                source=b.source,
                order=b.order,
                kind=b.kind,
                handgrad_buggy=hb,
                handgrad_fixed=hc,
                handgrad=outcome(hb, hc),
                check_grads_buggy=ab,
                check_grads_fixed=ac,
                check_grads=outcome(ab, ac),
                why_buggy=why_b,
                why_fixed=why_c,
                seconds=round(time.perf_counter() - t, 2),
            )
        )
        print(f"{b.name}: handgrad {out[-1]['handgrad']}, check_grads {out[-1]['check_grads']}")
    return out


def tally(rs, key) -> dict[str, int]:
    kinds = ("caught", "missed", "false alarm", "inconclusive")
    t = {k: sum(r[key].startswith(k) for r in rs) for k in kinds}
    t["fixed rule inconclusive"] = sum(r[f"{key}_fixed"] == "inconclusive" for r in rs)
    return t


def markdown(rs, where) -> str:
    h, a = tally(rs, "handgrad"), tally(rs, "check_grads")
    lines = [
        "# Real derivative bugs: handgrad against jax.test_util.check_grads",
        "",
        f"{len(rs)} bugs from public trackers (`tests/historical_bugs.py`), each as the buggy"
        " rule and the fixed one, checked at the point where the bug shows. handgrad:"
        " `check_vjp` / `check_jvp` at default settings; check_grads: `check_grads(f, primals,"
        " order, modes=['rev'] or ['fwd'])`. *Caught*: the buggy rule failed and the fixed"
        " one did not; *false alarm*: the fixed rule failed; *inconclusive*: the buggy rule"
        " was neither failed nor passed. Made by `python benchmarks/bench_historical_bugs.py` on"
        f" {where}.",
        "",
        "| checker | caught | missed | false alarm | inconclusive | fixed rule inconclusive |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, t in (("handgrad (default)", h), ("check_grads", a)):
        lines.append(
            f"| {name} | {t['caught']} | {t['missed']} | {t['false alarm']} | "
            f"{t['inconclusive']} | {t['fixed rule inconclusive']} |"
        )
    lines += [
        "",
        "| bug | order | handgrad: buggy / fixed | check_grads: buggy / fixed | why (handgrad) |",
        "|---|---:|---|---|---|",
    ]
    for r in rs:
        why = r["why_buggy"] if r["handgrad_buggy"] == "failed" else r["why_fixed"]
        lines.append(
            f"| [{r['name']}]({r['source']}) | {r['order']} | {r['handgrad_buggy']} / "
            f"{r['handgrad_fixed']} | {r['check_grads_buggy']} / {r['check_grads_fixed']} |"
            f" {cell(why[:240])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "reports"), help="directory of the report")
    args = p.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    rs = rows()
    where = machine()
    data = {"machine": where, "counts": {"handgrad": tally(rs, "handgrad")}, "bugs": rs}
    data["counts"]["check_grads"] = tally(rs, "check_grads")
    write_files(
        args.out,
        {"historical_bugs.json": to_json(data), "historical_bugs.md": markdown(rs, where)},
    )
    print(json.dumps(data["counts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
