"""A test session's gradient checks as one report, `pytest --gradcheck-report DIR`'s
(handgrad_cli.pytest_plugin records; this module judges and renders). docs/ci.md.

Per test: a failure the test expected (an `assert_*` or exception it caught, an xfail, a
`check_*` whose verdict it read, and then it passed) is listed apart, not counted; a
`check_*` failure nobody looked at counts. A hypothesis property's examples aggregate (the
worst stands for all); its reported failing example is kept in full; its other failing
examples (search and shrinking) are counted only. A user's exception is an error, naming
the function. `passed`: `jax_ref.verdict` over every row, and no error.
"""

from __future__ import annotations

import math
from typing import Any

from jax_ref.report import (
    cell,
    failure_lines,
    fmt,
    function_table,
    inconclusive_table,
    margin,
    versions,
)
from jax_ref.verdict import STATUSES, verdict

__all__ = ["session_markdown", "session_report", "step_summary", "summarize_test"]


def _failed(record: dict) -> bool:
    return record["raised"] or any(r["status"] == "failed" for r in record["results"])


def _expected_by_test(record: dict, outcome: str) -> bool:
    if outcome == "xfailed":
        return True
    if outcome != "passed":
        return False
    return bool(record["error"] or record["asserted"] or record.get("judged"))


def _how(record: dict, outcome: str) -> str:
    if outcome == "xfailed":
        return "the test is marked xfail, and failed"
    if record["error"]:
        return f"raised {record['error']}; the test, which passed, expected it"
    if record["raised"]:
        return "raised AssertionError, caught by the test, which passed (pytest.raises)"
    return "check_* results whose verdict the test read (.status, jax_ref.verdict); it passed"


def _rows(nodeid: str, record: dict, example) -> list[dict]:
    path, _, name = nodeid.partition("::")
    case = f"{record['call']} {record['subject']} {record['case']}".strip()
    return [
        {"derivation": path, "function": name or path, "case": case, **r, "example": example}
        for r in record["results"]
    ]


def _aggregate(groups: dict, rows: list[dict], example: int) -> None:
    """Fold one example's rows into {key: (representative row, statuses, examples)}."""
    for r in rows:
        key = (r["case"].split(" ")[0], r["parameter"], r["oracle"], r["dtype"])
        rep, statuses, examples = groups.get(key, (None, dict.fromkeys(STATUSES, 0), set()))
        statuses[r["status"]] += 1
        examples.add(example)
        if rep is None or _worse(r, rep):
            rep = r
        groups[key] = (rep, statuses, examples)


def _worse(a: dict, b: dict) -> bool:
    """Whether row a stands for its group before row b: a failure first, then the larger
    margin among judged rows, a judged row before an inconclusive one."""
    rank = {"failed": 2, "passed": 1, "inconclusive": 0}
    if rank[a["status"]] != rank[b["status"]]:
        return rank[a["status"]] > rank[b["status"]]
    return margin(a) > margin(b)


def _expected(nodeid: str, record: dict, outcome: str) -> dict:
    failed = [r for r in record["results"] if r["status"] == "failed"]
    return {
        "nodeid": nodeid,
        "call": record["call"],
        "subject": record["subject"],
        "case": record["case"],
        "how": _how(record, outcome),
        "tolerance_set": record["tolerance_set"],
        "count": 1,
        "failed": [{k: r[k] for k in _FAILURE_FIELDS if k in r} for r in failed],
    }


_FAILURE_FIELDS = (
    "parameter",
    "oracle",
    "dtype",
    "worst_index",
    "index_kind",
    "got",
    "want",
    "max_rel_err",
    "tolerance",
    "note",
)


def summarize_test(nodeid: str, records: list[dict], outcome: str) -> dict:
    """One test's records, reduced (module docstring): {"test": its summary, "checks":
    rows, "expected_failures": [...], "errors": [...]}."""
    hypothesis = any(r.get("example") is not None for r in records)
    final_failed = any(r.get("final") and _failed(r) for r in records)
    rows, groups, expected, errors = [], {}, {}, []
    examples, shrinking = set(), set()
    for rec in records:
        example, final = rec.get("example"), rec.get("final", False)
        if example is not None and not final:
            examples.add(example)
        if (_failed(rec) or rec["error"]) and _expected_by_test(rec, outcome):
            key = (rec["call"], rec["subject"], _how(rec, outcome))
            if key in expected:
                expected[key]["count"] += 1
            else:
                expected[key] = _expected(nodeid, rec, outcome)
            continue
        if rec["error"]:
            errors.append({"nodeid": nodeid, **{k: rec[k] for k in ("call", "subject", "case")}})
            errors[-1]["error"] = rec["error"]
            continue
        if example is not None and not final and final_failed and _failed(rec):
            shrinking.add(example)
            continue
        if example is not None and not final:
            _aggregate(groups, _rows(nodeid, rec, example), example)
        else:
            rows += _rows(nodeid, rec, "final" if final else None)
    for rep, statuses, exs in groups.values():
        rows.append({**rep, "example": "aggregated", "examples": len(exs), "statuses": statuses})
    return {
        "test": _test_summary(nodeid, outcome, records, rows, hypothesis, examples, shrinking)
        | {"expected_failures": sum(e["count"] for e in expected.values()), "errors": len(errors)},
        "checks": rows,
        "expected_failures": list(expected.values()),
        "errors": errors,
    }


def _counts(rows) -> dict[str, int]:
    n = dict.fromkeys(STATUSES, 0)
    for r in rows:
        for s, k in (r.get("statuses") or {r["status"]: 1}).items():
            n[s] += k
    return n


def _test_summary(nodeid, outcome, records, rows, hypothesis, examples, shrinking) -> dict:
    judged = [r for r in rows if r["status"] != "inconclusive"]
    worst = max((margin(r) for r in judged), default=None)
    powers = [r["detectable_rel_err"] for r in judged]
    power = max((p for p in powers if p is not None and not math.isnan(p)), default=None)
    return {
        "nodeid": nodeid,
        "outcome": outcome,
        "calls": len(records),
        "hypothesis": hypothesis,
        "examples": len(examples) if hypothesis else None,
        "shrinking_failures": len(shrinking),
        "counts": _counts(rows),
        "worst_margin": worst,
        "power": power,
        "tolerance_set": sorted({r["tolerance_set"] for r in records if r["tolerance_set"]}),
    }


def session_report(reduced: list[dict], outside: list[dict] | None = None) -> dict:
    """The session's report from each test's `summarize_test` (in any order: sorted by node
    id, so serial and pytest-xdist runs write the same report)."""
    reduced = sorted(reduced, key=lambda t: t["test"]["nodeid"])
    rows = [r for t in reduced for r in t["checks"]]
    errors = [e for t in reduced for e in t["errors"]]
    expected = [e for t in reduced for e in t["expected_failures"]]
    v = verdict(rows) if rows else None
    if v is None and not errors:
        word = "nothing checked"
    elif errors or v.failed:
        word = "failed"
    else:
        word = "not all judged" if v.unjudged else "passed"
    return {
        "passed": word == "passed",
        "verdict": word,
        "source": "pytest",
        "seed": None,
        "versions": versions(),
        "derivations": sorted({r["derivation"] for r in rows}),
        "counts": _counts(rows),
        "unjudged": list(v.unjudged) if v else [],
        "tests": [t["test"] for t in reduced],
        "checks": rows,
        "expected_failures": expected,
        "errors": errors,
        "outside_tests": len(outside or []),
        "ledger": [],
    }


_WORDS = {
    "passed": "✅ pass",
    "failed": "❌ FAIL",
    "not all judged": "⚠️ not all judged (never a pass)",
    "nothing checked": "⚠️ nothing checked (never a pass)",
}


def _head(report: dict) -> list[str]:
    n, tests = report["counts"], report["tests"]
    calls = sum(t["calls"] for t in tests)
    with_checks = sum(1 for t in tests if t["calls"])
    return [
        "# handgrad gradient checks: pytest session",
        "",
        f"**{_WORDS[report['verdict']]}** — {with_checks} tests made {calls} check calls: "
        f"{n['passed']} results passed, {n['failed']} failed and {n['inconclusive']} were "
        f"inconclusive (the oracle could not judge: never counted as a pass); "
        f"{len(report['unjudged'])} outputs no oracle could judge; "
        f"{len(report['errors'])} calls raised in the code under test; "
        f"{sum(e['count'] for e in report['expected_failures'])} expected failures, "
        "listed apart and not counted.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        "How to read it. *margin* is a result's error over its tolerance: under 1 passes."
        " *detects ≥* is the smallest relative error in one element the test's checks would"
        " all have flagged (the weakest of them). A hypothesis property's examples are"
        " aggregated: the worst example stands for all, and the failing example hypothesis"
        " reports is kept in full. A tolerance the test set (rtol=, atol=,"
        " tolerance_factor=) is shown beside its results.",
        "",
    ]


def _tests_table(tests: list[dict]) -> list[str]:
    lines = [
        "| test | outcome | check calls | examples | passed | failed | inconclusive |"
        " worst margin | detects ≥ | expected failures | tolerance set |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in tests:
        if not t["calls"]:
            continue
        n = t["counts"]
        ex = "" if t["examples"] is None else str(t["examples"])
        lines.append(
            f"| `{cell(t['nodeid'])}` | {t['outcome']} | {t['calls']} | {ex} | {n['passed']} |"
            f" {n['failed'] or ''}{' ❌' if n['failed'] else ''} | {n['inconclusive'] or ''} |"
            f" {fmt(t['worst_margin'])} | {fmt(t['power'])} | {t['expected_failures'] or ''} |"
            f" {cell('; '.join(t['tolerance_set'])) or '-'} |"
        )
    return [*lines, ""]


def _test_sections(report: dict) -> list[str]:
    by_test: dict[str, list[dict]] = {}
    for r in report["checks"]:
        by_test.setdefault(f"{r['derivation']}::{r['function']}", []).append(r)
    lines = []
    for t in report["tests"]:
        rows = by_test.get(t["nodeid"], [])
        if not t["calls"]:
            continue
        lines += [f"## `{cell(t['nodeid'])}` ({t['outcome']})", ""]
        if not rows:
            lines += [
                f"No result counted: {t['expected_failures']} expected failures and"
                f" {t['errors']} errors of the code under test, listed below.",
                "",
            ]
            continue
        if t["hypothesis"]:
            lines += [
                f"A hypothesis property: {t['examples']} examples ran checks; each row is the"
                " worst of them"
                + (
                    f"; {t['shrinking_failures']} of them were failing examples of hypothesis's"
                    " search and shrinking, not counted; the failing example it reported is"
                    " in full (*final*)"
                    if t["shrinking_failures"]
                    else ""
                )
                + ".",
                "",
            ]
        lines += function_table(rows, session=True)
    return lines


def _expected_lines(expected: list[dict]) -> list[str]:
    if not expected:
        return []
    lines = [
        "## Expected failures (apart, not counted)",
        "",
        "Checks that failed in tests that passed or xfailed: the test expected them.",
        "",
        "| test | call | function | how | times | what failed |",
        "|---|---|---|---|---:|---|",
    ]
    for e in expected:
        what = "; ".join(f"{f['parameter']} [{f['oracle']}]" for f in e["failed"]) or "-"
        lines.append(
            f"| `{cell(e['nodeid'])}` | {e['call']} | {cell(e['subject'])} | {cell(e['how'])} |"
            f" {e['count']} | {cell(what)} |"
        )
    return [*lines, ""]


def _error_lines(errors: list[dict]) -> list[str]:
    if not errors:
        return []
    lines = [
        "## Raised by the code under test",
        "",
        "| test | call | function | inputs | error |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| `{cell(e['nodeid'])}` | {e['call']} | {cell(e['subject'])} | {cell(e['case'])} |"
        f" {cell(e['error'])} |"
        for e in errors
    ]
    return [*lines, ""]


def session_markdown(report: dict, png_name: str | None = "gradcheck.png") -> str:
    """gradcheck.md of a test session: the verdict, a table of tests, a section per test,
    every failure in full, the expected failures apart, errors, why inconclusive."""
    lines = _head(report)
    if png_name:
        lines += [f"![error against tolerance, per test file]({png_name})", ""]
    lines += ["## Tests", "", *_tests_table(report["tests"])]
    lines += failure_lines(report["checks"])
    lines += _error_lines(report["errors"])
    lines += _test_sections(report)
    lines += _expected_lines(report["expected_failures"])
    lines += inconclusive_table(report["checks"])
    return "\n".join(lines) + "\n"


STEP_SUMMARY_LIMIT = 900_000  # GitHub takes 1 MiB per step's summary


def step_summary(report: dict) -> str:
    """The job summary (GITHUB_STEP_SUMMARY): the verdict, the tests, every failure and
    error; cut to GitHub's size with a line saying so (the report has the rest)."""
    lines = [*_head(report)[:-4], "", *_tests_table(report["tests"])]
    lines += failure_lines(report["checks"]) + _error_lines(report["errors"])
    text = "\n".join(lines) + "\n"
    if len(text.encode()) <= STEP_SUMMARY_LIMIT:
        return text
    cut = text.encode()[:STEP_SUMMARY_LIMIT].decode(errors="ignore")
    return cut.rsplit("\n", 1)[0] + "\n\n*(cut at GitHub's summary size: gradcheck.md has all)*\n"


def plot_rows(report: dict) -> dict[str, Any]:
    """The report as `jax_ref.report.plot_gradcheck` draws it: one column per test file
    (a session has too many tests for a column each)."""
    checks = [{**r, "function": r["derivation"]} for r in report["checks"]]
    return {**report, "checks": checks}
