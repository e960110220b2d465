"""The pytest plugin (`pytest --gradcheck-report DIR`) on a fresh project, run by pytester
in a subprocess, serially and with `-n 2`; and the session report's rules on records."""

import json

import pytest

from jax_ref.session import session_report, summarize_test

pytest_plugins = ["pytester"]

# A user's project: a passing check, a failing one, a hypothesis property whose rule is
# wrong for x > 0, an expected failure, a loosened tolerance, a user's exception caught by
# the test, and a test with no check.
PROJECT = """
import jax, jax.numpy as jnp, numpy as np, pytest
import jax_ref
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

jax.config.update("jax_enable_x64", True)
A = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)))
T = jnp.ones(6)
P = {"w": jnp.array([0.1, -0.2, 0.3]), "b": jnp.array(0.05)}


def loss(p, A, t):
    return jnp.mean((jnp.tanh(A @ p["w"] + p["b"]) - t) ** 2)


def grad(p, A, t, n=None):
    r = jnp.tanh(A @ p["w"] + p["b"])
    d = 2 * (r - t) * (1 - r**2) / (t.size if n is None else n)
    return {"w": A.T @ d, "b": d.sum()}


def forgot_1_over_n(p, A, t):
    return grad(p, A, t, n=1)


def test_passing():
    jax_ref.assert_gradients(loss, grad, P, A, T)


def test_failing():
    jax_ref.assert_gradients(loss, forgot_1_over_n, P, A, T)


def test_expected_failure():
    with pytest.raises(AssertionError):
        jax_ref.assert_gradients(loss, forgot_1_over_n, P, A, T)


def test_loosened():
    jax_ref.assert_gradients(loss, grad, P, A, T, rtol=1e-3)


def test_bad_input_caught():
    with pytest.raises(ValueError):
        jax_ref.check_gradients(loss, grad, {"w": jnp.ones(3, int), "b": 0.0}, A, T)


def test_no_check():
    assert True


def sin_vjp(x, ct):
    return (ct * jnp.cos(x) * jnp.where(x > 0, 1.5, 1.0),)


@settings(deadline=None, max_examples=10, derandomize=True, database=None)
@given(arrays("float64", (3,), elements=st.floats(-2, 2)))
def test_property(x):
    jax_ref.assert_vjp(jnp.sin, jnp.asarray(x), vjp=sin_vjp, contracts=())
"""


def _strict(text):
    def refuse(c):
        raise ValueError(f"not strict JSON: {c}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def project(pytester):
    pytester.makepyfile(test_project=PROJECT)
    return pytester


def _run(pytester, *args):
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", *args)


@pytest.fixture(autouse=True)
def _compiled_once(monkeypatch):
    """The project's XLA programs kept in the cache the test session uses (tests/conftest.py):
    the subprocesses compile once per machine, not per run. The outer session's report
    options and job summary are not the project's."""
    from handgrad_cli.main import cache_dir

    # this session's own report options (.ci/run's PYTEST_ADDOPTS) and job summary stay out
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    if cache_dir():
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(cache_dir()))
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def _serial(project, monkeypatch):
    """The project run serially with the flag and $GITHUB_STEP_SUMMARY: (report, md, summary)."""
    summary = project.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    _run(project, "--gradcheck-report=out").assert_outcomes(passed=5, failed=2)
    report = _strict((project.path / "out" / "gradcheck.json").read_text())
    return report, (project.path / "out" / "gradcheck.md").read_text(), summary


def test_report_of_a_fresh_project(project, monkeypatch):
    report, md, summary = _serial(project, monkeypatch)
    tests = {t["nodeid"].split("::")[1]: t for t in report["tests"]}
    assert report["verdict"] == "failed" and report["passed"] is False
    assert set(tests) == {
        "test_passing",
        "test_failing",
        "test_expected_failure",
        "test_loosened",
        "test_bad_input_caught",
        "test_property",
    }
    assert tests["test_passing"]["counts"] == {"passed": 4, "failed": 0, "inconclusive": 0}
    assert tests["test_failing"]["counts"]["failed"] == 4
    assert tests["test_failing"]["outcome"] == "failed"
    assert 1 < tests["test_failing"]["worst_margin"] and tests["test_passing"]["worst_margin"] < 1
    # expected failures apart, never among the rows the verdict counts
    rows = report["checks"]
    assert not [
        r for r in rows if r["function"] in ("test_expected_failure", "test_bad_input_caught")
    ]
    how = {e["nodeid"].split("::")[1]: e["how"] for e in report["expected_failures"]}
    assert "pytest.raises" in how["test_expected_failure"]
    assert "ValueError" in how["test_bad_input_caught"]
    # a hypothesis property: aggregated, its reported failing example in full, no shrinks
    prop = [r for r in rows if r["function"] == "test_property"]
    assert {r["example"] for r in prop} == {"aggregated", "final"}
    assert [r["status"] for r in prop if r["example"] == "final"] == ["failed", "failed"]
    assert tests["test_property"]["examples"] >= 2
    assert tests["test_property"]["shrinking_failures"] >= 1
    assert sum(tests["test_property"]["counts"].values()) <= 2 * tests["test_property"]["examples"]
    # a loosened tolerance is shown beside its results, in the JSON and the Markdown
    loose = [r for r in rows if r["function"] == "test_loosened"]
    assert loose and all(r["tolerance_set"] == "set by the caller: rtol=0.001" for r in loose)
    assert "rtol=0.001" in md
    for name, t in tests.items():  # a section per test, its outcome in the heading
        assert f"## `test_project.py::{name}` ({t['outcome']})" in md
    assert "## What failed, and why" in md and "(final)" in md
    assert (project.path / "out" / "gradcheck.png").stat().st_size > 1000
    assert "# handgrad gradient checks" in summary.read_text()
    assert "test_project.py::test_failing" in summary.read_text()


@pytest.mark.slow
def test_the_same_report_under_xdist_from_the_ini_line(project, monkeypatch):
    """pytest-xdist, the ini line instead of the flag: the workers' records merged into the
    report a serial run writes (hypothesis derandomized: the same examples)."""
    report, _, summary = _serial(project, monkeypatch)
    project.makeini("[pytest]\ngradcheck_report = out_ini\n")
    _run(project, "-n", "2").assert_outcomes(passed=5, failed=2)
    merged = _strict((project.path / "out_ini" / "gradcheck.json").read_text())
    assert merged["tests"] == report["tests"] and merged["counts"] == report["counts"]
    assert merged["expected_failures"] == report["expected_failures"]
    assert len(merged["checks"]) == len(report["checks"])
    assert summary.read_text().count("# handgrad gradient checks") == 2  # appended


def test_quiet_unless_asked(pytester):
    pytester.makepyfile(
        """
        import sys

        def test_nothing_loaded():
            assert "jax" not in sys.modules and "jax_ref" not in sys.modules
        """
    )
    result = _run(pytester)
    result.assert_outcomes(passed=1)
    assert "gradcheck" not in result.stdout.str()


# --- the session's rules, on records ------------------------------------------------------


def _result(status, parameter="x", oracle="autodiff", err=0.0, tol=1e-10):
    return {
        "parameter": parameter,
        "oracle": oracle,
        "status": status,
        "note": "",
        "dtype": "float64",
        "shape": [3],
        "max_abs_err": err,
        "max_rel_err": err,
        "tolerance": tol,
        "worst_index": [0],
        "got": 1.0,
        "want": 1.0,
        "detectable_rel_err": tol,
        "baseline_err": None,
        "index_kind": "element",
        "tolerance_set": "",
        "passed": status == "passed",
    }


def _record(statuses, call="assert_vjp", example=None, final=False, **kw):
    rec = {
        "call": call,
        "subject": "f",
        "case": "float64[3]",
        "tolerance_set": "",
        "asserted": call.startswith("assert"),
        "allow_inconclusive": False,
        "raised": call.startswith("assert") and "failed" in statuses,
        "error": None,
        "results": [_result(s, err=2e-10 if s == "failed" else 1e-12) for s in statuses],
        "example": example,
        "final": final,
    }
    return {**rec, **kw}


def test_shrinking_attempts_are_not_results():
    """A failed property: examples 1-3 pass, 4-6 fail (the search, then shrinks), then
    hypothesis's final replay fails: 3 aggregated passes and the final in full."""
    recs = [_record(["passed"], example=i) for i in (1, 2, 3)]
    recs += [_record(["failed"], example=i) for i in (4, 5, 6)]
    recs.append(_record(["failed"], example=7, final=True))
    out = summarize_test("t.py::test_p", recs, "failed")
    assert out["test"]["shrinking_failures"] == 3 and out["test"]["examples"] == 6
    assert out["test"]["counts"] == {"passed": 3, "failed": 1, "inconclusive": 0}
    assert [(r["example"], r["status"]) for r in out["checks"]] == [
        ("final", "failed"),
        ("aggregated", "passed"),
    ]
    assert out["checks"][1]["examples"] == 3


def test_a_passing_property_keeps_its_failures_that_no_replay_reported():
    """No final replay failed (the test passed, say with check_*): a failing example is a
    result, not a shrink; the worst example stands for its group."""
    recs = [_record(["passed"], call="check_vjp", example=i) for i in (1, 2)]
    recs.append(_record(["failed"], call="check_vjp", example=3))
    out = summarize_test("t.py::test_p", recs, "passed")
    assert out["test"]["shrinking_failures"] == 0
    (row,) = out["checks"]
    assert row["status"] == "failed" and row["statuses"]["passed"] == 2


def test_which_failures_were_expected():
    caught = _record(["failed"])  # assert_* raised, the test passed: pytest.raises
    looked = _record(["failed"], call="check_vjp", judged=True)
    ignored = _record(["failed"], call="check_vjp")
    for rec, expected in ((caught, True), (looked, True), (ignored, False)):
        out = summarize_test("t.py::test", [rec], "passed")
        assert bool(out["expected_failures"]) == expected, rec
        assert bool(out["checks"]) != expected
    xfailed = summarize_test("t.py::test", [_record(["failed"])], "xfailed")
    assert "xfail" in xfailed["expected_failures"][0]["how"]
    failed = summarize_test("t.py::test", [_record(["failed"])], "failed")
    assert not failed["expected_failures"] and failed["checks"][0]["status"] == "failed"


def test_nothing_judged_is_never_a_pass():
    assert session_report([])["verdict"] == "nothing checked"
    unjudged = summarize_test("t.py::test", [_record(["inconclusive"], call="check_vjp")], "passed")
    report = session_report([unjudged])
    assert report["verdict"] == "not all judged" and report["passed"] is False
    err = _record([], call="check_vjp", error="OwnCodeError: f raised at the given point")
    report = session_report([summarize_test("t.py::test", [err], "failed")])
    assert report["verdict"] == "failed" and "f raised" in report["errors"][0]["error"]
