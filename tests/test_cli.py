"""The handgrad command (handgrad_cli/): exit codes, reports, determinism."""

import json
from pathlib import Path

import pytest

from handgrad_cli import main


def test_help_and_bad_usage(capsys):
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["check", "--dtype", "float16"]) == 2
    assert main(["check", "--seed", "-1"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["check", "--derivation", "nope"]) == 2


def test_check_writes_deterministic_reports(tmp_path):
    """Same report, same bytes: rendering is a pure function of the report (no time, no
    hash order), so two renderings of one run must match byte for byte."""
    from jax_ref.report import from_json, gradcheck_markdown, plot_gradcheck, to_json

    a = tmp_path / "a"
    # float64: no precision budget, so no float64 golden compiled beside the float32 case
    quick = ["check", "--derivation", "sigmoid_bce", "--dtype", "float64", "--examples", "0"]
    assert main([*quick, "--out", str(a)]) == 0
    again = from_json((a / "gradcheck.json").read_text())
    assert to_json(again) == (a / "gradcheck.json").read_text()
    assert gradcheck_markdown(again) == (a / "gradcheck.md").read_text()
    plot_gradcheck(again, tmp_path / "again.png")
    assert (tmp_path / "again.png").read_bytes() == (a / "gradcheck.png").read_bytes()
    report = json.loads((a / "gradcheck.json").read_text())
    assert report["passed"] and report["seed"] == 0
    assert set(report) == {
        "passed",
        "seed",
        "versions",
        "derivations",
        "counts",
        "unjudged",
        "checks",
        "ledger",
        "below_resolution",
    }
    assert sum(report["counts"].values()) == len(report["checks"])
    assert report["derivations"] == ["sigmoid_bce"]
    keys = {
        "function",
        "parameter",
        "dtype",
        "shape",
        "oracle",
        "max_abs_err",
        "max_rel_err",
        "tolerance",
        "worst_index",
        "passed",
    }
    assert all(keys <= set(c) for c in report["checks"])
    assert {c["oracle"] for c in report["checks"]} == {"referee", "finite_difference"}
    assert {c["derivation"] for c in report["checks"]} == {"sigmoid_bce"}
    assert all(
        {"chain", "step", "equation", "max_abs_err", "passed"} <= set(e) for e in report["ledger"]
    )
    md = (a / "gradcheck.md").read_text()
    assert md.startswith("# handgrad check\n\n**✅ pass**") and "gradcheck.png" in md


def test_check_exits_1_when_a_check_fails(tmp_path, monkeypatch):
    import jax_ref.sweep

    def failing(**kwargs):
        return {
            "passed": False,
            "seed": 0,
            "versions": {},
            "ledger": [],
            "unjudged": [],
            "counts": {"passed": 0, "failed": 1, "inconclusive": 0},
            "checks": [
                {
                    "derivation": "mlp",
                    "function": "mlp_grads",
                    "case": "x",
                    "parameter": "W1",
                    "oracle": "autodiff",
                    "dtype": "float64",
                    "shape": [2, 2],
                    "max_abs_err": 1.0,
                    "max_rel_err": 1.0,
                    "tolerance": 1e-10,
                    "worst_index": [0, 0],
                    "got": 1.0,
                    "want": 0.0,
                    "passed": False,
                    "status": "failed",
                    "note": "",
                }
            ],
        }

    monkeypatch.setattr(jax_ref.sweep, "run_check", failing)
    # one derivation: the serial path (several run in worker processes)
    assert main(["check", "--derivation", "mlp", "--out", str(tmp_path)]) == 1
    assert "FAIL" in (tmp_path / "gradcheck.md").read_text()
    # --verify of a report with a failure reproduces it, and still exits 1: a failure
    # reproduced is a failure
    verify = ["check", "--derivation", "mlp", "--verify", str(tmp_path / "gradcheck.json")]
    assert main(verify) == 1


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    from jax_ref import report

    (tmp_path / "gradcheck.md").write_text("previous report\n")

    def crash(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report.write_files(tmp_path, {"gradcheck.md": "new\n", "gradcheck.png": crash})
    assert (tmp_path / "gradcheck.md").read_text() == "previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradcheck.md"]


@pytest.mark.slow
def test_mutants_command_reports_kills(tmp_path, capsys):
    assert main(["mutants", "--derivation", "sigmoid_bce", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "mutants.json").read_text())
    assert report["killed"] == report["total"] == 3 and report["harness_errors"] == 0
    assert all(not m["missed"] for m in report["mutants"])
    assert "**kills**" in (tmp_path / "mutants.md").read_text()
    assert main(["mutants", "--derivation", "nope"]) == 2


def test_check_without_matplotlib_writes_the_rest(tmp_path, monkeypatch, capsys):
    """matplotlib is optional: no traceback, no lost report, one line saying what to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else real(name, *a),
    )
    args = ["check", "--derivation", "sigmoid_bce", "--dtype", "float64", "--examples", "0"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradcheck.json", "gradcheck.md"]
    assert "pip install matplotlib" in capsys.readouterr().err


def test_bad_targets_and_output_paths_exit_2_before_any_work(tmp_path, capsys):
    a_file = tmp_path / "some.npz"
    a_file.write_text("not a directory")
    no_checks = tmp_path / "empty.py"
    no_checks.write_text("x = 1\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    cases = {
        ("check", "--out", str(a_file)): "exists and is not a directory",
        ("check", "--out", str(a_file / "sub")): "exists and is not a directory",
        ("mutants", "--out", str(a_file)): "exists and is not a directory",
        ("check", str(tmp_path / "nope.py")): "no such file",
        ("check", str(no_checks)): "defines no CHECKS",
        ("check", str(broken)): "raised while importing: RuntimeError: boom",
        ("check", "no_such_module_xyz"): "cannot import module",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert f"handgrad {argv[0]}: error:" in err and message in err, err
        assert "Traceback" not in err


@pytest.mark.slow
def test_check_a_rules_file_writes_its_report(tmp_path):
    """handgrad check examples/rules.py: the example file of rules, exit 0, the report."""
    root = Path(__file__).resolve().parent.parent
    assert main(["check", str(root / "examples" / "rules.py"), "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gradcheck.json").read_text())
    assert report["counts"]["failed"] == 0 and report["passed"]
    oracles = {c["oracle"] for c in report["checks"]}
    assert oracles >= {"autodiff", "finite_difference", "jit", "vmap", "composed", "structure"}
    assert "## `rules`: `tanh custom_vjp, float64`" in (tmp_path / "gradcheck.md").read_text()


def test_verify_compares_verdicts_and_figures_not_noise():
    from handgrad_cli.main import verify_report

    def row(err, status="passed", case="c"):
        return {
            "derivation": "d",
            "function": "f",
            "case": case,
            "parameter": "p",
            "oracle": "autodiff",
            "status": status,
            "max_rel_err": err,
            "tolerance": 1e-4,
        }

    committed = {"checks": [row(2e-6), row(1e-9, case="tiny")], "ledger": [{"passed": True}]}
    same = {"checks": [row(2.6e-6), row(7e-9, case="tiny")], "ledger": [{"passed": True}]}
    assert verify_report(same, committed) == []  # float32 noise: a factor < 4, or < 1e-3·tol
    moved = {"checks": [row(3e-5), row(1e-9, case="tiny")], "ledger": [{"passed": True}]}
    assert len(verify_report(moved, committed)) == 1
    flipped = {
        "checks": [row(2e-4, "failed"), row(1e-9, case="tiny")],
        "ledger": [{"passed": True}],
    }
    assert "passed in the report, failed now" in verify_report(flipped, committed)[0]
    fewer = {"checks": [row(2e-6)], "ledger": [{"passed": True}]}
    assert verify_report(fewer, committed)[0].startswith("missing now")


@pytest.mark.slow
def test_check_over_processes_writes_the_serial_report(tmp_path):
    """Several derivations are checked in worker processes, one each: the report is the
    one the serial sweep writes, row for row."""
    from jax_ref.derivations import get
    from jax_ref.sweep import run_check

    names = ["softmax_ce", "sigmoid_bce"]
    argv = ["check", "--dtype", "float64", "--examples", "0", "--out", str(tmp_path)]
    for n in names:
        argv += ["--derivation", n]
    assert main(argv) == 0
    import numpy as np

    from jax_ref.report import to_json

    serial = run_check(dtypes=(np.float64,), examples=0, derivations=[get(n) for n in names])
    assert to_json(serial) == (tmp_path / "gradcheck.json").read_text()


def test_the_program_parses_its_arguments_once():
    """`handgrad --help` and a usage error print once (they printed twice when the sweep's
    worker start-up parsed the arguments a second time)."""
    import subprocess
    import sys

    def program(*argv):
        code = "import sys; from handgrad_cli import run; sys.argv[1:] = %r; sys.exit(run())"
        return subprocess.run(
            [sys.executable, "-c", code % (list(argv),)], capture_output=True, text=True
        )

    helped = program("--help")
    assert helped.returncode == 0 and helped.stdout.count("usage: handgrad") == 1, helped.stdout
    bad = program("check", "--dtype", "float16")
    assert bad.returncode == 2 and bad.stderr.count("usage: handgrad") == 1, bad.stderr


def test_stopping_the_workers_ends_them_at_once():
    """A task still running when the command ends (a usage error found after the sweep was
    submitted) is not waited for: the workers are terminated."""
    import time

    from handgrad_cli.main import stop_workers, worker_pool

    pool = worker_pool(1)
    future = pool.submit(time.sleep, 60)
    while not future.running():
        time.sleep(0.05)
    processes = list(pool._processes.values())  # the standard library's pool, not ours
    stop_workers(pool)
    # polled, not join()ed: the pool's own thread may reap the child first, and a join
    # racing it returns before the exit is seen
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes and not any(p.is_alive() for p in processes)
