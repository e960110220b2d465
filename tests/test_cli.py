"""The handgrad command (handgrad/cli.py): exit codes, reports, determinism."""

import json

import pytest

from handgrad.cli import main


def test_help_and_bad_usage(capsys):
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["check", "--dtype", "float16"]) == 2
    assert main(["check", "--seed", "-1"]) == 2
    assert main(["frobnicate"]) == 2


def test_check_writes_deterministic_reports(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["check", "--dtype", "float32", "--examples", "0", "--out", str(a)]) == 0
    assert main(["check", "--dtype", "float32", "--examples", "0", "--out", str(b)]) == 0
    for name in ("gradcheck.json", "gradcheck.md", "gradcheck.png"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    report = json.loads((a / "gradcheck.json").read_text())
    assert report["passed"] and report["seed"] == 0
    assert set(report) == {"passed", "seed", "versions", "checks", "ledger"}
    keys = {"function", "parameter", "dtype", "shape", "oracle", "max_abs_err", "max_rel_err",
            "tolerance", "worst_index", "passed"}
    assert all(keys <= set(c) for c in report["checks"])
    assert {c["oracle"] for c in report["checks"]} == {"autodiff", "referee",
                                                       "finite_difference"}
    assert all({"chain", "step", "equation", "max_abs_err", "passed"} <= set(e)
               for e in report["ledger"])
    md = (a / "gradcheck.md").read_text()
    assert md.startswith("# handgrad check\n\n**✅ pass**") and "gradcheck.png" in md


def test_check_exits_1_when_a_check_fails(tmp_path, monkeypatch):
    import jax_ref.seedcheck

    def failing(**kwargs):
        return {"passed": False, "seed": 0, "versions": {}, "ledger": [], "checks": [
            {"function": "mlp_grads", "case": "x", "parameter": "W1", "oracle": "autodiff",
             "dtype": "float64", "shape": [2, 2], "max_abs_err": 1.0, "max_rel_err": 1.0,
             "tolerance": 1e-10, "worst_index": [0, 0], "got": 1.0, "want": 0.0,
             "passed": False, "note": ""}]}

    monkeypatch.setattr(jax_ref.seedcheck, "run_check", failing)
    assert main(["check", "--out", str(tmp_path)]) == 1
    assert "FAIL" in (tmp_path / "gradcheck.md").read_text()


def test_reports_are_written_atomically(tmp_path, monkeypatch):
    from jax_ref import report

    (tmp_path / "gradcheck.md").write_text("previous report\n")

    def crash(path):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report.write_files(tmp_path, {"gradcheck.md": "new\n", "gradcheck.png": crash})
    assert (tmp_path / "gradcheck.md").read_text() == "previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gradcheck.md"]
