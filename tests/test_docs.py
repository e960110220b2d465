"""Every Python block in the README and docs/ runs, as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


BLOCKS = [
    pytest.param(
        p.name, i, code, id=f"{p.name}:{i}", marks=[pytest.mark.slow] if "@given" in code else []
    )  # hypothesis: ~10 s
    for p in DOCS
    for i, code in enumerate(blocks(p))
]


def test_the_readme_has_python_blocks():
    assert sum(b.values[0] == "README.md" for b in BLOCKS) >= 2


@pytest.mark.parametrize(("name", "i", "code"), BLOCKS)
def test_block_runs(name, i, code):
    namespace = {"__name__": f"doc_{i}"}
    exec(compile(code, f"{name} block {i}", "exec"), namespace)
    for fn_name, fn in list(namespace.items()):  # a hypothesis test defined in a block: run it
        if fn_name.startswith("test_") and callable(fn):
            fn()
