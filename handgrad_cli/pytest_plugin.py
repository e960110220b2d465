"""handgrad's pytest plugin: `pytest --gradcheck-report DIR` (ini: `gradcheck_report = DIR`).

Records every `check_*` / `assert_*` call of `jax_ref` in the session with its test's node
id; writes DIR/gradcheck.json (strict JSON), .md and .png (with matplotlib), and appends
the summary to $GITHUB_STEP_SUMMARY when set. Under pytest-xdist each worker reduces its
tests and the controller merges them. Quiet unless asked: without the option it registers
nothing and imports no jax (loaded by the `pytest11` entry point). See jax_ref.session.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest

__all__ = ["Recorder"]

_WORKER_KEY = "handgrad_gradcheck"
_OUTSIDE = "(outside any test)"


def pytest_addoption(parser):
    group = parser.getgroup("handgrad", "handgrad gradient-check reports")
    group.addoption(
        "--gradcheck-report",
        metavar="DIR",
        default=None,
        help="write every jax_ref check of the session to DIR/gradcheck.{json,md,png} "
        "(and the summary to $GITHUB_STEP_SUMMARY when set)",
    )
    parser.addini(
        "gradcheck_report",
        "directory for the gradient-check report of the session (as --gradcheck-report)",
        default="",
    )


def pytest_configure(config):
    target = config.getoption("gradcheck_report") or config.getini("gradcheck_report")
    if target:
        out = Path(target)
        if not out.is_absolute():
            out = Path(config.invocation_params.dir) / out
        if _read_as_a_path(config, target, out):
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    f"pytest took {target} for a test path when it looked for its rootdir and "
                    f"ini file (before handgrad's plugin was loaded): write "
                    f"--gradcheck-report={target}"
                ),
                stacklevel=2,
            )
        config.pluginmanager.register(Recorder(config, out), "handgrad-gradcheck-recorder")


def _read_as_a_path(config, target: str, out: Path) -> bool:
    """Whether `--gradcheck-report DIR` came as two words with DIR an existing directory:
    pytest then took DIR for a test path when it chose its rootdir and ini file."""
    args = list(config.invocation_params.args)
    pairs = itertools.pairwise(args)
    return out.is_dir() and any(a == "--gradcheck-report" and b == target for a, b in pairs)


class Recorder:
    """The session's listener (jax_ref.record) and the hooks that name, reduce, merge and
    write what it heard."""

    def __init__(self, config, out: Path):
        from jax_ref.record import listening

        self.config, self.out = config, out
        self.current: str | None = None
        self.records: list[dict] = []
        self.outcome = "passed"
        self.reduced: list[dict] = []
        self.outside: list[dict] = []
        self._last_context, self._example = None, 0
        self._listening = listening(self._on_check)
        self._listening.__enter__()

    # --- what is heard --------------------------------------------------------------------

    def _on_check(self, record: dict) -> None:
        example, final = self._hypothesis_example()
        record.update(example=example, final=final)  # the same dict: `judged` may follow
        if self.current is None:
            self.outside.append(record)
        else:
            self.records.append(record)

    def _hypothesis_example(self):
        """(example number, whether it is hypothesis's final replay) inside a hypothesis
        test case; (None, False) outside one."""
        control = sys.modules.get("hypothesis.control")
        if control is None:
            return None, False
        try:
            if not control.currently_in_test_context():
                return None, False
            context = control.current_build_context()
        except AttributeError:  # another hypothesis: examples cannot be told apart
            return None, False
        if context is not self._last_context:
            self._last_context, self._example = context, self._example + 1
        return self._example, bool(getattr(context, "is_final", False))

    # --- per test -------------------------------------------------------------------------

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current, self.records, self.outcome = item.nodeid, [], "passed"
        self._last_context, self._example = None, 0
        yield
        from jax_ref.verdict import unwatch

        unwatch()
        if self.records:
            from jax_ref.session import summarize_test

            self.reduced.append(summarize_test(item.nodeid, self.records, self.outcome))
        self.current, self.records, self._last_context = None, [], None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        rep = outcome.get_result()
        xfail = hasattr(rep, "wasxfail")
        if rep.when == "call":
            if rep.skipped:
                self.outcome = "xfailed" if xfail else "skipped"
            elif rep.failed:
                self.outcome = "failed"
            else:
                self.outcome = "xpassed" if xfail else "passed"
        elif rep.failed:  # setup or teardown
            self.outcome = "error"
        elif rep.when == "setup" and rep.skipped:
            self.outcome = "skipped"

    # --- the session ----------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error):
        """pytest-xdist's controller: a worker's reduced tests."""
        data = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
        if data:
            part = json.loads(data)
            self.reduced += part["reduced"]
            self.outside += part["outside"]

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        self._listening.__exit__(None, None, None)
        if hasattr(self.config, "workeroutput"):  # an xdist worker: to the controller
            part = {"reduced": self.reduced, "outside": self.outside}  # merged by the controller
            self.config.workeroutput[_WORKER_KEY] = json.dumps(part)
            return
        if self.outside:  # checks made at import or collection time, in no test
            from jax_ref.session import summarize_test

            self.reduced.append(summarize_test(_OUTSIDE, self.outside, "outside a test"))
        self.written = write_session(self.reduced, self.outside, self.out)

    def pytest_terminal_summary(self, terminalreporter):
        if hasattr(self.config, "workeroutput") or not hasattr(self, "written"):
            return
        report, paths = self.written
        n = report["counts"]
        terminalreporter.write_line(
            f"handgrad gradcheck report: {report['verdict']} ({n['passed']} passed, "
            f"{n['failed']} failed, {n['inconclusive']} inconclusive, "
            f"{sum(e['count'] for e in report['expected_failures'])} expected failures); "
            f"wrote {', '.join(str(p) for p in paths)}"
        )


def write_session(reduced: list[dict], outside: list[dict], out: Path):
    """The report, written atomically to `out`, and its summary appended to
    $GITHUB_STEP_SUMMARY when set: (report, paths written)."""
    from jax_ref.report import plot_gradcheck, to_json, write_files
    from jax_ref.session import plot_rows, session_markdown, session_report, step_summary

    report = session_report(reduced, outside)
    files = {"gradcheck.json": to_json(report)}
    plotting = bool(report["checks"]) and _has_matplotlib()
    files["gradcheck.md"] = session_markdown(report, "gradcheck.png" if plotting else None)
    if plotting:
        files["gradcheck.png"] = lambda path: plot_gradcheck(plot_rows(report), path)
    paths = write_files(out, files)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(step_summary(report))
        paths.append(Path(summary))
    return report, paths


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None
