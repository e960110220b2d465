"""The audit report in Markdown: a summary, the bugs first with their reproductions, then
the conventions and JAX's limitations, coverage by module, and the skips."""

from __future__ import annotations

from jax_ref.audit.triage import reproduction
from jax_ref.report import cell

__all__ = ["audit_markdown"]


def _summary(r) -> list[str]:
    cov, cats, judged = r["coverage"], r["categories"], r["judged"]
    o = r["options"]
    return [
        f"# handgrad audit: JAX {r['jax']}",
        "",
        f"Every derivative rule of {len(r['modules'])} modules ({', '.join(r['modules'])}),"
        " `jax.jvp` and `jax.vjp`, checked against central differences of the function's own"
        " forward pass in float64 (there is no autodiff reference: autodiff is what is under"
        f" test), orders {', '.join(map(str, o['orders']))}, dtypes {', '.join(o['dtypes'])},"
        " at an ordinary point and at special points (zeros, ties, integers and half-integers,"
        " negative arguments, 1e-8 and 30; for matrices the identity, repeated eigenvalues,"
        f" near-singular). Made by `handgrad audit{' --quick' if o['quick'] else ''}` in"
        f" {r.get('seconds', 0):.0f} s.",
        "",
        f"- **Coverage:** {cov['found']} public callables found, **{cov['audited']} audited**,"
        f" {cov['skipped']} skipped (reasons below).",
        f"- **Rules judged:** {judged.get('passed', 0)} passed, {judged.get('failed', 0)} failed,"
        f" {judged.get('inconclusive', 0)} inconclusive (the differences could not judge: a kink"
        f" or NaN at every element), {judged.get('raised', 0)} raised (no rule: listed as"
        f" limitations), {judged.get('unrun', 0)} not run (the function's time budget spent).",
        "- **Findings:** "
        + (", ".join(f"{n} {c}" for c, n in sorted(cats.items())) or "none")
        + ". *bug*: the derivative is wrong, confirmed by differences at three step sizes;"
        " *convention*: a choice at a point where the function is not differentiable;"
        " *checker*: a handgrad false alarm (to fix in handgrad); *forward*: the rule matches"
        " mpmath's derivative and JAX's forward pass is what departs from the mathematics"
        " there; *limitation*: JAX has no rule there.",
        f"- **Unsettled:** {len(r.get('unsettled', []))} disagreements that the differences at"
        " 8x and 1/8x the step did not confirm (rounding inside the function, or curvature):"
        " counted inconclusive, never a finding, and listed below.",
        "",
    ]


def _finding_rows(findings, with_repro) -> list[str]:
    lines = []
    for f in findings:
        where = f["point"].get("at", f["point"].get("kind"))
        up = f" Upstream: {f['upstream']}." if f.get("upstream") else ""
        ev = f" Evidence: {cell(f['evidence'])}." if f.get("evidence") else ""
        flags = f" with `{f['point']['with']}`" if f["point"].get("with") else ""
        lines.append(
            f"- `{f['function']}`{flags} {f['mode']} order {f['order']} {f['dtype']} at"
            f" {f['point']['kind']} {cell(where)}: {cell(f['reason'])}.{up}{ev}"
        )
        if with_repro:
            lines += [
                "",
                "  ```python",
                *("  " + s for s in reproduction(f).splitlines()),
                "  ```",
                "",
            ]
    return lines


def _write_ups(r, bugs) -> list[str]:
    """Each function with a bug no upstream issue covers, written up ready to file: a
    title, what is wrong where, the evidence, the reproduction, the version."""
    by_fn: dict[str, list] = {}
    for f in bugs:
        if not f.get("upstream"):
            by_fn.setdefault(f["function"], []).append(f)
    if not by_fn:
        return []
    lines = [
        f"## New bugs, written up to file ({len(by_fn)} functions)",
        "",
        "Each is a draft issue for JAX's tracker: title, body, reproduction. Not yet filed.",
        "",
    ]
    for fn, fs in by_fn.items():
        f = fs[0]
        where = f["point"].get("at", f["point"].get("args"))
        rules = sorted({f"{x['mode']} order {x['order']} ({x['dtype']})" for x in fs})
        lines += [
            f"### `{fn}`: wrong derivative at {f['point']['kind']}",
            "",
            f"- **Title:** `{fn}` returns a wrong derivative at {cell(where)}",
            f"- **JAX:** {r['jax']} (CPU). **Rules affected:** {', '.join(rules)}.",
            f"- **What is wrong:** {cell(f['reason'])}.",
        ]
        if f.get("evidence"):
            lines.append(f"- **Arbitrary precision:** {cell(f['evidence'])}.")
        lines += ["", "```python", reproduction(f), "```", ""]
    return lines


def audit_markdown(r) -> str:
    findings = r["findings"] + r.get("unsettled", [])
    by = {
        c: [f for f in findings if f["category"] == c]
        for c in ("bug", "checker", "forward", "convention", "limitation", "unsettled")
    }
    lines = _summary(r)
    for cat, title, repro in (
        ("bug", "Bugs", True),
        ("checker", "handgrad false alarms (to fix)", True),
        ("forward", "Forward passes that depart from the mathematics (the rule is right)", True),
        ("convention", "Conventions", False),
        ("limitation", "Limitations: no rule", False),
        ("unsettled", "Unsettled: the differences disagree between step sizes (no verdict)", False),
    ):
        if by[cat]:
            lines += [f"## {title} ({len(by[cat])})", "", *_finding_rows(by[cat], repro), ""]
    lines += _write_ups(r, by["bug"])
    lines += ["## Coverage by module", "", "| module | found | audited |", "|---|---:|---:|"]
    lines += [
        f"| `{m}` | {c['found']} | {c['audited']} |" for m, c in r["coverage"]["by_module"].items()
    ]
    lines += ["", "## Why functions were skipped", "", "| reason | functions |", "|---|---:|"]
    lines += [f"| {cell(k)} | {n} |" for k, n in r["coverage"]["skip_reasons"].items()]
    return "\n".join(lines) + "\n"
