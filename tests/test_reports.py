"""The committed reports and docs read right where people read them: every Markdown table
has as many cells in each row as in its header (an unescaped `|` in a cell breaks it), and
each report links only files that exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKDOWN = sorted(
    [*ROOT.glob("reports/**/*.md"), ROOT / "README.md", *ROOT.glob("docs/*.md")],
    key=str,
)


def cells(row: str) -> int:
    """Cells of a table row: the unescaped pipes between the outer ones."""
    return len(re.findall(r"(?<!\\)\|", row.strip())) - 1


def tables(text: str) -> list[list[str]]:
    out, current, fenced = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            current.append(line)
        elif current:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def test_the_counter_sees_a_broken_row():
    assert cells("| a | b |") == 2 and cells(r"| a \| b | c |") == 2
    assert cells("| N=1 |z|~1e-06 | c |") == 4  # the bug this test exists for


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_row_has_the_header_s_cells(path):
    for table in tables(path.read_text()):
        want = cells(table[0])
        bad = [row for row in table if cells(row) != want]
        assert not bad, f"{path.name}: header has {want} cells; these rows differ: {bad[:3]}"


@pytest.mark.parametrize(
    "path", [p for p in MARKDOWN if "reports" in p.parts], ids=lambda p: p.name
)
def test_reports_link_files_that_exist(path):
    for target in re.findall(r"\]\(([^)\s#]+\.(?:md|png|json|py))\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{path}: broken link {target}"


def test_a_benchmark_section_is_replaced_and_the_others_kept():
    """Each benchmark script rewrites only its own section of reports/benchmarks.md."""
    from jax_ref.report import replace_section

    text = "# Benchmarks\n\nhead\n\n<!-- a -->\n\nA\n\n<!-- b -->\n\nB\n"
    assert replace_section(text, "<!-- a -->", "<!-- a -->\n\nA2\n") == (
        "# Benchmarks\n\nhead\n\n<!-- a -->\n\nA2\n\n<!-- b -->\n\nB\n"
    )
    assert replace_section(text, "", "# Benchmarks\n\nnew\n") == (
        "# Benchmarks\n\nnew\n\n<!-- a -->\n\nA\n\n<!-- b -->\n\nB\n"
    )
    added = replace_section(text, "<!-- c -->", "<!-- c -->\n\nC\n")
    assert added == text + "\n<!-- c -->\n\nC\n"
    assert replace_section(added, "<!-- b -->", "<!-- b -->\n\nB2\n").endswith(
        "<!-- b -->\n\nB2\n\n<!-- c -->\n\nC\n"
    )


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON")


@pytest.mark.parametrize(
    "path", sorted(ROOT.glob("reports/**/*.json")), ids=lambda p: str(p.relative_to(ROOT))
)
def test_committed_reports_are_strict_json(path):
    """NaN and Infinity are not JSON (`JSON.parse` rejects them): null and a reason."""
    import json

    json.loads(path.read_text(), parse_constant=_refuse)


def test_non_finite_values_are_null_with_a_reason_and_read_back_exactly():
    import json
    import math

    from jax_ref.report import from_json, to_json

    data = {"rows": [{"err": math.inf, "got": math.nan, "ok": 1.0}], "curve": [0.5, -math.inf]}
    text = to_json(data)
    strict = json.loads(text, parse_constant=_refuse)
    assert strict["rows"][0] == {
        "err": None,
        "got": None,
        "ok": 1.0,
        "nonfinite": {"err": "inf", "got": "nan"},
    }
    assert strict["curve"] == [0.5, None] and strict["nonfinite"] == {"curve": [None, "-inf"]}
    back = from_json(text)
    assert back["rows"][0]["err"] == math.inf and math.isnan(back["rows"][0]["got"])
    assert back["curve"] == [0.5, -math.inf] and to_json(back) == text
