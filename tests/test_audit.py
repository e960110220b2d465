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


FIELD = textwrap.dedent(
    '''
    import jax
    import jax.numpy as jnp
    from jax import lax


    def float32_inside(x):
        """A kernel's habit: float64 in and out, float32 inside (rounds at 6e-8)."""
        return jnp.sin(x.astype(jnp.float32)).astype(x.dtype)


    @jax.custom_jvp
    def float32_inside_wrong(x):
        return jnp.sin(x.astype(jnp.float32)).astype(x.dtype)


    float32_inside_wrong.defjvp(
        lambda p, t: (float32_inside_wrong(p[0]), 1.01 * jnp.cos(p[0]) * t[0])
    )


    @jax.custom_jvp
    def square_real_only(z):
        """z², its rule 2·conj(z)·dz: right for real z, wrong for complex z."""
        return z * z


    square_real_only.defjvp(lambda p, t: (p[0] * p[0], 2 * jnp.conj(p[0]) * t[0]))


    def total_ignoring_mask(x, where=None):
        """sum(x, where=mask) whose derivative ignores the mask (a rule that ignores a
        flag): right without `where`, wrong with it."""
        everything = jnp.sum(x)
        return lax.stop_gradient(jnp.sum(x, where=where) - everything) + everything
    '''
)


def test_audit_sees_past_float32_inside_and_into_complex_and_flags(tmp_path, monkeypatch):
    """Each wrong rule here was invisible to the audit before: the complex point and the
    where= variant did not exist; and the right float32-inside kernel was a false bug
    (differences bounded by float64's rounding, its forward pass rounding at 6e-8)."""
    (tmp_path / "field_target.py").write_text(FIELD)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out"
    code = main(["audit", "field_target", "--order", "1", "--dtype", "float64",
                 "--out", str(out), "--workers", "1"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "audit-field_target.json").read_text())
    bugs = [f for f in report["findings"] if f["category"] == "bug"]
    where = {(f["function"].rsplit(".", 1)[-1], f["point"]["kind"], f["point"].get("with"))
             for f in bugs}  # fmt: skip
    names = {w[0] for w in where}
    assert "float32_inside" not in names  # right: no false alarm
    assert "float32_inside_wrong" in names  # 1 % wrong: still caught
    assert {k for n, k, _ in where if n == "square_real_only"} == {"complex"}
    assert {w for n, _, w in where if n == "total_ignoring_mask"} == {"where=mask"}
    assert report["coverage"]["flag_variants"]["audited"] >= 1
    assert not any(f["category"] == "checker" for f in report["findings"])


def test_rounding_inside_the_function_is_measured_not_assumed():
    """cauchy.ppf at q = 1e-8: tan(π(q - ½)) rounds q - ½ at 5e-17, so its differences
    at the standard step are off by 1e-5. Before: a `checker` finding (a disagreement
    at one step only). Now the forward pass's own noise is measured (ECnoise) and bounds
    the differences: its right rule (mpmath agrees) passes."""
    import jax.scipy.stats as st

    from jax_ref.audit import audit_function

    _, counts, findings = audit_function(
        "jax.scipy.stats.cauchy.ppf", st.cauchy.ppf, dtypes=("float64",), orders=(1,)
    )
    assert not [f for f in findings if f.category in ("bug", "checker")]
    assert counts["passed"] >= 4 and not counts["failed"]


def test_a_disagreement_the_other_steps_do_not_confirm_is_no_verdict(monkeypatch):
    """Failed at the standard step, passed at 8x: the differences are not converged.
    That is a finding about the oracle, `unsettled`, counted inconclusive: never a bug,
    never a `checker` false alarm. Confirmed at both other steps: a bug."""
    import jax.numpy as jnp

    from jax_ref.audit import run
    from jax_ref.audit.inputs import find_inputs

    setup = find_inputs("jax.numpy.sin", jnp.sin)
    j = run.Judged("failed", 0, 1.0, 2.0, 1e-6)
    args = ("sin", setup, setup.g, ("ordinary", ""), setup.floats, jnp.dtype("float64"))
    for others, want in (
        (("passed", "failed"), "unsettled"),
        (("failed", "failed"), "bug"),
    ):
        fake = dict(zip((8.0, 1 / 8), (run.Judged(s) for s in others)))
        monkeypatch.setattr(run, "_steps", lambda *a, fake=fake, **k: fake)
        assert run.settle(*args, "jvp", 1, 0, j).category == want


def test_mpmath_evidence_confirms_a_bug_and_clears_a_right_rule():
    pytest.importorskip("mpmath")
    from jax_ref.audit.precise import evidence

    spence = {"function": "jax.scipy.special.spence", "mode": "jvp", "order": 1,
              "dtype": "float64", "point": {"kind": "special values", "at": [1.0]}}  # fmt: skip
    ev = evidence(spence)  # spence'(1) = -1 (d/dx Li2(1 - x) = log(x)/(1 - x) -> -1)
    assert ev["agrees"] is False and ev["mpmath"] == pytest.approx([-1.0])
    sin2 = {**spence, "function": "jax.numpy.sin", "order": 2, "point": {"kind": "x", "at": [0.7]}}
    assert evidence(sin2)["agrees"] is True
    edge = {
        **spence,
        "function": "jax.scipy.stats.beta.cdf",
        "point": {"kind": "x", "at": [0.0, 1.5, 2.0]},
    }
    assert evidence(edge)["agrees"] is None  # the edge of the domain: mpmath has no value


def test_a_matrix_is_never_held_still_element_by_element():
    """The dot test holds still the input elements whose outputs the differences cannot
    judge, for elementwise vector functions only. A matrix's output element (i, j) is
    not its input element (i, j): holding those still broke the symmetric moves that
    cholesky's rule assumes, and its right rule at a near-singular matrix was a bug."""
    import jax.scipy.linalg as sl

    from jax_ref.audit import audit_function

    _, counts, findings = audit_function(
        "jax.scipy.linalg.cholesky", sl.cholesky, dtypes=("float64",), orders=(1,), flags=False
    )
    assert not [f for f in findings if f.category in ("bug", "checker")]
    assert counts["passed"] >= 2


def test_the_where_trap_is_named():
    """A NaN rule where the differences are exactly 0 (a CDF below its support) is a bug
    with the where-trap's name; one where the differences are finite but unresolved
    (a bound of 1e5 around -2e4) is not called that."""
    from jax_ref.audit.run import Finding
    from jax_ref.audit.triage import triage

    f = Finding("jax.scipy.stats.chi2.cdf", "jvp", 1, "float64", {"kind": "x"}, "bug", "nan")
    f.rule, f.differences, f.bound = float("nan"), 0.0, 0.0
    assert "where-trap" in triage(f).reason
    f.differences, f.bound = -2.25e4, 1.1e5
    assert "where-trap" not in triage(f).reason
