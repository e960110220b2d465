"""`handgrad audit` (jax_ref/audit/): JAX's rules against differences of their forward
passes. A few functions, quick: a right one passes, a module's wrong rule is a `bug` with
its reproduction, a kink is a `convention`, and nothing is a handgrad false alarm."""

import json
import textwrap

import pytest

from handgrad_cli.main import main

WRONG = textwrap.dedent(
    '''
    import jax
    import jax.numpy as jnp


    @jax.custom_jvp
    def wrong_tanh(x):
        """tanh with the historical mistake: the derivative 1 - tanh(x) (not squared)."""
        return jnp.tanh(x)


    wrong_tanh.defjvp(lambda p, t: (jnp.tanh(p[0]), (1 - jnp.tanh(p[0])) * t[0]))


    def right_softplus(x):
        return jnp.logaddexp(x, 0.0)


    def ramp(x):
        return jnp.maximum(x, 0.0)
    '''
)


@pytest.fixture
def target(tmp_path, monkeypatch):
    (tmp_path / "audit_target.py").write_text(WRONG)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_audit_finds_a_wrong_rule_and_no_false_alarm(target, capsys):
    out = target / "out"
    code = main(["audit", "audit_target", "--order", "1", "--dtype", "float64",
                 "--out", str(out), "--workers", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr()
    report = json.loads((out / "audit-audit_target.json").read_text())
    assert report["coverage"]["audited"] == 3
    cats = {(f["function"], f["category"]) for f in report["findings"]}
    assert ("audit_target.wrong_tanh", "bug") in cats
    assert not any(c == "checker" for _, c in cats)
    assert ("audit_target.ramp", "convention") in cats  # relu-like kink at 0
    assert not any(f == "audit_target.right_softplus" for f, _ in cats)
    md = (out / "audit-audit_target.md").read_text()
    assert "## Bugs" in md and "```python" in md


def test_audit_quick_only_on_jax_functions(tmp_path):
    code = main(["audit", "--quick", "--only", "sin", "arctan2", "sinc", "--out",
                 str(tmp_path), "--workers", "1"])  # fmt: skip
    assert code == 0
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert report["coverage"]["audited"] >= 3  # jax.lax.sin as well as jax.numpy.sin
    assert report["judged"]["passed"] > 0 and not report["judged"].get("failed")


def test_audit_bad_arguments_say_what_was_expected(capsys):
    assert main(["audit", "--dtype", "float16"]) == 2
    assert "--dtype must list float64" in capsys.readouterr().err
    assert main(["audit", "--only", "no_such_function_anywhere"]) == 2
