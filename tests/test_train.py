"""The training loop (handgrad/train.py), datasets and `handgrad train`."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import handgrad as hg
import jax_ref
from handgrad.datasets import load_npz, spiral
from handgrad.train import TrainConfig, fit
from handgrad_cli import main

DS = spiral()


def _fit(dtype=np.float32, **kw):
    params = hg.init_params(jax.random.PRNGKey(0), 2, 100, 3, dtype=dtype)
    cfg = TrainConfig(
        **{**dict(epochs=300, batch_size=30, lr=0.1, momentum=0.9, reg=1e-4), **kw.pop("cfg", {})}
    )
    return fit(params, DS.X.astype(dtype), DS.y, cfg, jax.random.PRNGKey(1), **kw)


def test_spiral_trains_to_98_percent_and_is_deterministic():
    a, b = _fit(), _fit()  # the second reuses the first's compiled epoch
    assert a.train_accuracy[-1] >= 0.98
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p, q)
    assert a.loss == b.loss


def test_hand_gradient_matches_autodiff_at_every_step_float64():
    h = _fit(np.float64, grad_fn=jax_ref.mlp_grads, probe_fn=hg.mlp_grads, cfg=dict(epochs=10))
    assert h.max_grad_diff <= 1e-10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_one_percent_wrong_gradient_fails_the_step_gate(dtype):
    """The step gate (handgrad train's (a)) at each dtype's table tolerance, errors on each
    leaf's natural scale: a gradient 1 % wrong in one leaf fails in float32 too."""
    from handgrad_cli.train import STEP_AGREEMENT

    def wrong(p, X, y, reg):
        loss, g = hg.mlp_grads(p, X, y, reg)
        return loss, g._replace(b2=1.01 * g.b2)

    name = np.dtype(dtype).name
    h = _fit(dtype, grad_fn=jax_ref.mlp_grads, probe_fn=wrong, cfg=dict(epochs=2))
    assert h.max_grad_diff > STEP_AGREEMENT[name]
    h = _fit(dtype, grad_fn=jax_ref.mlp_grads, probe_fn=hg.mlp_grads, cfg=dict(epochs=2))
    assert h.max_grad_diff <= STEP_AGREEMENT[name]


def test_bad_training_arguments():
    with pytest.raises(ValueError, match="momentum in \\[0, 1\\)"):
        _fit(cfg=dict(epochs=1, momentum=1.5))
    with pytest.raises(ValueError, match="y must hold labels in \\[0, C\\) = \\[0, 3\\)"):
        params = hg.init_params(jax.random.PRNGKey(0), 2, 4, 3)
        fit(params, DS.X.astype(np.float32), DS.y + 1, TrainConfig(epochs=1), jax.random.PRNGKey(0))


@pytest.mark.slow
def test_four_devices_equal_one_device():
    """Runs in a subprocess: the host must be split into 4 devices before JAX starts."""
    script = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        import handgrad as hg
        from handgrad.datasets import spiral
        from handgrad.train import TrainConfig, fit
        assert len(jax.devices()) == 4, jax.devices()
        ds = spiral()
        p = hg.init_params(jax.random.PRNGKey(0), 2, 16, 3, dtype=np.float64)
        cfg = TrainConfig(epochs=5, batch_size=32, lr=0.1, momentum=0.9, reg=1e-4)
        runs = [fit(p, ds.X, ds.y, cfg, jax.random.PRNGKey(1), devices=n) for n in (1, 4)]
        for a, b in zip(runs[0].params, runs[1].params):
            a, b = np.asarray(a), np.asarray(b)
            assert np.max(np.abs(a - b)) <= 1e-12 * np.max(np.abs(a)), np.max(np.abs(a - b))
        print("equal", runs[1].train_accuracy[-1])
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "equal" in out.stdout


def test_batch_must_split_over_devices():
    with pytest.raises(ValueError, match="devices must be <= the 1 available"):
        _fit(cfg=dict(epochs=1), devices=4)


def _npz(tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_loading_and_its_errors(tmp_path):
    X = np.random.default_rng(0).standard_normal((6, 3))
    y = np.array([0, 1, 2, 0, 1, 2])
    ds = load_npz(_npz(tmp_path, X=X, y=y))
    assert ds.X.shape == (6, 3) and ds.y.dtype == np.int32
    cases = [
        (dict(X=X), r"missing key\(s\) \['y'\]"),
        (dict(X=X[0], y=y), r"X must be \(N, D\), a 2-D array; got shape \(3,\)"),
        (dict(X=X, y=y[:5]), r"y must be \(N,\) = \(6,\) to match X \(N, D\) = \(6, 3\)"),
        (dict(X=X, y=y.astype(float)), "y must hold integer class labels"),
        (dict(X=X, y=np.array([0, 1, 3, 0, 1, 3])), r"labels 0..C-1 \(C = 4\).*absent \[2\]"),
        (dict(X=X, y=y - 1), "got min -1"),
        (dict(X=np.where(X > 1, np.nan, X), y=y), "X must be finite; got nan"),
    ]
    for arrays, match in cases:
        with pytest.raises(ValueError, match=match):
            load_npz(_npz(tmp_path, **arrays))
    path = tmp_path / "pickled.npz"
    np.savez(path, X=np.array([object()], dtype=object), y=y)
    with pytest.raises(ValueError, match="without pickle"):
        load_npz(path)


def test_train_command_writes_the_report(tmp_path, capsys):
    out = tmp_path / "r"
    rc = main(
        [
            "train",
            "--dataset",
            "spiral",
            "--epochs",
            "3",
            "--grad",
            "both",
            "--quiet",
            "--dtype",
            "float64",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    report = json.loads((out / "training.json").read_text())
    assert report == json.loads(capsys.readouterr().out)  # --json: the report on stdout
    assert {
        "dataset",
        "config",
        "runs",
        "max_step_grad_diff",
        "param_diff",
        "control_diff",
        "devices",
    } <= set(report)
    assert set(report["runs"]) == {"hand", "autodiff"}
    assert len(report["runs"]["hand"]["loss"]) == 3 == len(report["param_diff"])
    assert report["max_step_grad_diff"] <= 1e-10
    assert (out / "loss_curves.png").stat().st_size > 1000
    assert "Hand vs autodiff: ✅ the hand gradient agrees" in (out / "training.md").read_text()
    assert report["agreement"]["checked"] and report["agreement"]["passed"]


def test_training_on_one_gradient_says_agreement_was_not_checked(tmp_path):
    """`--grad hand` compares nothing: the report said `agreement: passed: true`."""
    out = tmp_path / "r"
    argv = ["train", "--dataset", "spiral", "--epochs", "2", "--grad", "hand", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0  # trained; nothing was asked to agree
    agreement = json.loads((out / "training.json").read_text())["agreement"]
    assert agreement["checked"] is False and agreement["passed"] is False
    assert "Hand vs autodiff: not checked" in (out / "training.md").read_text()


def test_train_command_bad_usage(tmp_path, capsys):
    assert main(["train", "--dataset", "nope", "--out", str(tmp_path)]) == 2
    assert "spiral, digits or a PATH.npz" in capsys.readouterr().err
    assert main(["train", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert main(["train", "--dataset", str(tmp_path / "missing.npz")]) == 2


@pytest.mark.slow
def test_digits_reaches_97_percent_test_accuracy():
    pytest.importorskip("sklearn")
    from handgrad.datasets import digits

    ds = digits()
    assert ds.X.shape[1] == 64 and ds.X_test is not None
    params = hg.init_params(jax.random.PRNGKey(0), 64, 128, 10)
    cfg = TrainConfig(epochs=40, batch_size=32, lr=0.05, momentum=0.9, reg=1e-3)
    h = fit(
        params,
        ds.X.astype(np.float32),
        ds.y,
        cfg,
        jax.random.PRNGKey(1),
        X_test=ds.X_test.astype(np.float32),
        y_test=ds.y_test,
    )
    assert h.test_accuracy >= 0.97


def test_digits_without_scikit_learn_says_so(monkeypatch):
    from handgrad.datasets import digits

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(RuntimeError, match=r"pip install 'handgrad\[datasets\]'"):
        digits()


def test_npz_whole_number_float_labels_and_non_archives_say_the_fix(tmp_path):
    from handgrad.datasets import load_npz

    floaty = tmp_path / "floaty.npz"
    np.savez(floaty, X=np.ones((4, 2)), y=np.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"whole numbers: save them as integers"):
        load_npz(floaty)
    text = tmp_path / "text.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=r"not an \.npz archive"):
        load_npz(text)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_npz(tmp_path / "missing.npz")


@pytest.mark.slow
def test_attention_classifier_hand_gradient_passes_both_oracles():
    """handgrad train --model attention: the whole model's hand backward (MLP head,
    residual, attention, projections) against autodiff of jax_ref's loss and against
    finite differences, float64."""
    import jax

    import jax_ref
    from handgrad.attn_model import attention_classifier_grads, init_attention_params
    from jax_ref.derivations.attn import attention_classifier_loss

    params = init_attention_params(jax.random.PRNGKey(0), 4, 3, 5, 3, dtype=np.float64)
    X = np.random.default_rng(0).standard_normal((6, 12))
    y = np.array([0, 1, 2, 0, 1, 2])
    jax_ref.assert_gradients(
        attention_classifier_loss,
        attention_classifier_grads,
        params,
        X,
        y,
        1e-3,
        returns_loss=True,
    )


@pytest.mark.slow
def test_attention_model_trains_digits_to_95_percent(tmp_path):
    pytest.importorskip("sklearn")
    assert (
        main(
            [
                "train",
                "--model",
                "attention",
                "--dataset",
                "digits",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "training.json").read_text())
    assert report["runs"]["hand"]["test_accuracy"] >= 0.95
    assert report["agreement"]["passed"] and report["max_step_grad_diff"] <= 1e-4


def test_the_fused_head_trains_as_the_softmax_head_does():
    """--head fused: the MLP trained through handgrad.linear_cross_entropy's rule follows
    the softmax head's trajectory within rounding (float64, every parameter)."""
    import functools

    plain = _fit(np.float64, cfg=dict(epochs=5))
    fused = _fit(
        np.float64, cfg=dict(epochs=5), grad_fn=functools.partial(hg.mlp_grads, head="fused")
    )
    for p, q in zip(plain.params, fused.params):
        np.testing.assert_allclose(q, p, rtol=1e-9, atol=1e-12)
    assert abs(plain.loss[-1] - fused.loss[-1]) <= 1e-12 * abs(plain.loss[-1])
    with pytest.raises(ValueError, match="head must be one of"):
        hg.mlp_grads(plain.params, DS.X, DS.y, head="linear")


@pytest.mark.slow
def test_the_attention_model_trains_through_the_fused_head():
    """--model attention --head fused: the softmax head's trajectory within rounding, and
    the fused head's whole gradient passes both oracles against autodiff of jax_ref's loss."""
    import functools

    from handgrad.attn_model import attention_classifier_grads, init_attention_params
    from handgrad.train import ATTENTION
    from jax_ref.derivations.attn import attention_classifier_loss

    params = init_attention_params(jax.random.PRNGKey(0), 4, 3, 5, 3, dtype=np.float64)
    X = np.random.default_rng(0).standard_normal((6, 12))
    y = np.array([0, 1, 2, 0, 1, 2])
    cfg = TrainConfig(epochs=3, batch_size=3, lr=0.1, momentum=0.9, reg=1e-3)
    runs = [
        fit(params, X, y, cfg, jax.random.PRNGKey(1), model=ATTENTION, grad_fn=g)
        for g in (None, functools.partial(attention_classifier_grads, head="fused"))
    ]
    for p, q in zip(runs[0].params, runs[1].params):
        np.testing.assert_allclose(q, p, rtol=1e-9, atol=1e-12)
    jax_ref.assert_gradients(
        attention_classifier_loss,
        functools.partial(attention_classifier_grads, head="fused"),
        params,
        X,
        y,
        1e-3,
        returns_loss=True,
    )
