"""`handgrad train`: train the derivation's MLP on hand-derived gradients, and with `--grad both`
prove it trains as autodiff does, in the way that survives chaotic dynamics:

(a) `max_step_grad_diff`: at every step of the autodiff run, the hand gradient evaluated at
    the same parameters and batch; the largest relative disagreement over the whole run.
(b) `param_diff` per epoch between the hand and the autodiff run, beside `control_diff`:
    two autodiff runs whose initial parameters differ by a relative 1e-12 (one float32 ulp
    in float32, where 1e-12 is not representable). Rounding differences grow with the
    dynamics either way; the control shows how fast they grow with no gradient error.
(c) the final accuracies agree within one point.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from typing import Any

import numpy as np

__all__ = ["DEFAULTS", "add_parser", "run"]

# Per-dataset defaults that train well (measured: spiral 99% train, digits 97.8% test).
DEFAULTS: dict[str, dict[str, Any]] = {
    "spiral": dict(hidden=100, epochs=300, batch_size=30, lr=0.1, momentum=0.9, reg=1e-4),
    "digits": dict(hidden=128, epochs=40, batch_size=32, lr=0.05, momentum=0.9, reg=1e-3),
    "npz": dict(hidden=100, epochs=50, batch_size=32, lr=0.05, momentum=0.9, reg=1e-4),
}
# --model attention (measured: digits 98.3% test with 8 tokens of 8 pixels)
ATTENTION_DEFAULTS: dict[str, Any] = dict(
    hidden=128, epochs=40, batch_size=32, lr=0.02, momentum=0.9, reg=1e-3
)
# (a)'s limit: the tolerance table's value for the dtype, the error measured against each
# leaf's natural scale (handgrad.train.natural_scales): near convergence a - onehot cancels,
# and its rounding is large against the gradient but not against that scale.
STEP_AGREEMENT = {"float64": 1e-10, "float32": 1e-4}


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train the MLP on hand gradients (and autodiff); write "
        "training.json/.md and loss_curves.png",
    )
    t.add_argument(
        "--model",
        choices=["mlp", "attention"],
        default="mlp",
        help="mlp: the seed's two-layer ReLU MLP; attention: one self-attention layer over "
        "tokens (the --tokens rows of each example), a residual, then the MLP head; its "
        "defaults: "
        + ", ".join(f"{k} {v:g}" for k, v in ATTENTION_DEFAULTS.items())
        + " (default mlp)",
    )
    t.add_argument(
        "--tokens",
        type=int,
        default=8,
        help="--model attention: tokens per example; D must be a multiple (default 8: the "
        "8x8 digits as 8 rows of 8 pixels)",
    )
    t.add_argument(
        "--dataset",
        default="spiral",
        help="spiral, digits (needs scikit-learn) or PATH.npz with X (N, D) and integer "
        "labels y (N,) (default spiral)",
    )
    _add_hyperparameters(t)
    _add_run_options(t)


def _add_hyperparameters(t) -> None:
    def per_dataset(key: str) -> str:
        return ", ".join(f"{k} {v[key]:g}" for k, v in DEFAULTS.items())

    t.add_argument("--hidden", type=int, help=f"hidden units H (default: {per_dataset('hidden')})")
    t.add_argument("--epochs", type=int, help=f"epochs (default: {per_dataset('epochs')})")
    t.add_argument(
        "--batch-size", type=int, help=f"minibatch size (default: {per_dataset('batch_size')})"
    )
    t.add_argument("--lr", type=float, help=f"learning rate (default: {per_dataset('lr')})")
    t.add_argument(
        "--momentum", type=float, help=f"SGD momentum (default: {per_dataset('momentum')})"
    )
    t.add_argument(
        "--lr-decay", type=float, default=1.0, help="lr *= this after each epoch (default 1.0)"
    )
    t.add_argument("--reg", type=float, help=f"L2 weight on W1, W2 (default: {per_dataset('reg')})")


def _add_run_options(t) -> None:
    t.add_argument(
        "--grad",
        dest="gradients",
        choices=["hand", "autodiff", "both"],
        default="both",
        help="train on the hand gradients, autodiff's, or both and compare them (default both)",
    )
    t.add_argument(
        "--head",
        choices=["softmax", "fused"],
        default="softmax",
        help="the hand gradient's output layer: softmax (z2 = a1·W2 + b2, then the seed's "
        "softmax cross-entropy) or fused (handgrad.linear_cross_entropy's streaming rule); "
        "default softmax",
    )
    t.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="(default float32)"
    )
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument(
        "--devices", type=int, default=1, help="shard each batch over N devices (default 1)"
    )
    t.add_argument(
        "--out",
        help="report directory (default reports/<dataset>/, reports/<dataset>_float64/ "
        "with --dtype float64, reports/<dataset>_fused/ with --head fused)",
    )
    t.add_argument(
        "--json",
        action="store_true",
        help="print the JSON report to stdout (training.json is written to --out either way)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")


def _dataset_name(dataset: str) -> str:
    """The report directory's name: the dataset's, or the .npz file's stem."""
    from pathlib import Path

    return dataset if dataset in ("spiral", "digits") else Path(dataset).stem


def _bad_usage(message: str) -> int:
    print(f"handgrad train: error: {message}", file=sys.stderr)
    return 2


def _hyperparameters(args) -> tuple[dict, str | None]:
    """(the hyperparameters: given, else the model's and dataset's defaults), or a usage
    problem."""
    kind = args.dataset if args.dataset in ("spiral", "digits") else "npz"
    defaults = ATTENTION_DEFAULTS if args.model == "attention" else DEFAULTS[kind]
    hp = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    if args.tokens < 1:
        return hp, f"--tokens must be >= 1; got {args.tokens}"
    for k in ("hidden", "epochs", "batch_size"):
        if hp[k] < 1:
            return hp, f"--{k.replace('_', '-')} must be >= 1; got {hp[k]}"
    if args.devices < 1:
        return hp, f"--devices must be >= 1; got {args.devices}"
    return hp, None


def _out_dir(args) -> str:
    suffix = ("_attention" if args.model == "attention" else "") + (
        "_float64" if args.dtype == "float64" else ""
    )
    suffix += "_fused" if args.head == "fused" else ""
    return args.out or f"reports/{_dataset_name(args.dataset)}{suffix}"


def _use_devices(n: int) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    if n > 1 and hasattr(jax.config, "jax_num_cpu_devices"):
        # on a CPU-only machine, let the host stand in for N devices (before first use)
        try:
            jax.config.update("jax_num_cpu_devices", n)
        except RuntimeError:  # backend already initialised: keep what it has
            pass


def _write(report: dict, out: str, as_json: bool) -> int:
    from handgrad_cli.main import has_plots
    from jax_ref.report import to_json, write_files

    text = to_json(report)
    files = {
        "training.json": text,
        "training.md": training_markdown(report),
        "loss_curves.png": lambda path: plot_training(report, path),
    }
    if not has_plots("handgrad train"):
        del files["loss_curves.png"]
    written = write_files(out, files)
    if as_json:
        sys.stdout.write(text)
    else:
        _print_summary(report)
        print("wrote " + ", ".join(str(w) for w in written))
    a = report["agreement"]
    return 0 if a["passed"] or not a["checked"] else 1  # training alone: nothing to fail


def run(args) -> int:
    """`handgrad train`: exit 0 when the runs agree, 1 when not, 2 on bad usage."""
    from handgrad_cli.main import out_dir_problem

    _use_devices(args.devices)
    hp, problem = _hyperparameters(args)
    out = _out_dir(args)
    problem = problem or out_dir_problem(out)
    if problem:
        return _bad_usage(problem)
    from handgrad.datasets import load

    try:
        ds = load(args.dataset, seed=args.seed)
    except (ValueError, FileNotFoundError) as e:
        return _bad_usage(str(e))
    except RuntimeError as e:  # a missing optional dependency
        print(f"handgrad train: {e}", file=sys.stderr)
        return 2
    try:
        report = train_report(ds, hp, args)
    except ValueError as e:
        return _bad_usage(str(e))
    return _write(report, out, args.json)


def _model(args, name, X, C, hidden, dtype, init_key):
    """(the handgrad.train model, its initial parameters, the referee's gradient)."""
    import handgrad as hg

    if args.model != "attention":
        import jax_ref
        from handgrad.train import MLP

        return MLP, hg.init_params(init_key, X.shape[1], hidden, C, dtype=dtype), jax_ref.mlp_grads
    from handgrad.attn_model import init_attention_params
    from handgrad.train import ATTENTION
    from jax_ref.derivations.attn import attention_classifier_grads

    T = args.tokens
    if X.shape[1] % T:
        raise ValueError(
            f"--tokens {T} must divide the {X.shape[1]} features of {name} "
            "(each example is T tokens of D/T features)"
        )
    params = init_attention_params(init_key, T, X.shape[1] // T, hidden, C, dtype=dtype)
    return ATTENTION, params, attention_classifier_grads


def _config(hp, args, X, X_test, C) -> dict:
    return {
        **hp,
        "lr_decay": args.lr_decay,
        "dtype": args.dtype,
        "seed": args.seed,
        "grad": args.gradients,
        "model": args.model,
        "head": args.head,
        "tokens": args.tokens if args.model == "attention" else None,
        "N": int(X.shape[0]),
        "D": int(X.shape[1]),
        "C": C,
        "N_test": None if X_test is None else int(X_test.shape[0]),
    }


def _run_summary(h) -> dict:
    return {
        "loss": h.loss,
        "train_accuracy": h.train_accuracy[-1],
        "train_accuracy_per_epoch": h.train_accuracy,
        "test_accuracy": h.test_accuracy,
        "seconds": round(h.seconds, 3),
    }


def _moved(params, rel, seed):
    """`params` with each leaf scaled by 1 ± rel (random signs): the control's start."""
    import jax

    leaves, tree = jax.tree.flatten(params)
    signs = jax.random.rademacher(jax.random.PRNGKey(seed + 1), (len(leaves),))
    return jax.tree.unflatten(
        tree, [p * (1 + rel * s).astype(p.dtype) for p, s in zip(leaves, signs)]
    )


def _agreement(report: dict, dtype_name: str) -> dict:
    """(a) every step's gradients within the dtype's limit, (c) accuracies within a point."""
    runs = report["runs"]
    acc = [
        (r["test_accuracy"] if r["test_accuracy"] is not None else r["train_accuracy"])
        for r in (runs["hand"], runs["autodiff"])
    ]
    limit = STEP_AGREEMENT[dtype_name]
    agreement = {
        "checked": True,
        "step_grad_limit": limit,
        "step_grads_agree": limit is None or report["max_step_grad_diff"] <= limit,
        "accuracy_gap": abs(acc[0] - acc[1]),
        "accuracies_agree": abs(acc[0] - acc[1]) <= 0.01,
    }
    agreement["passed"] = agreement["step_grads_agree"] and agreement["accuracies_agree"]
    return agreement


def train_report(ds, hp: dict, args) -> dict:
    """Train as `args` say and return training.json's content: the runs, and with
    `--grad both` the comparison (a), (b), (c) of the module docstring."""
    import jax
    import jax.numpy as jnp

    from handgrad.train import TrainConfig, fit

    dtype = {"float32": np.float32, "float64": np.float64}[args.dtype]
    X, X_test = ds.X.astype(dtype), None if ds.X_test is None else ds.X_test.astype(dtype)
    C = int(max(ds.y.max(), -1 if ds.y_test is None else ds.y_test.max())) + 1
    cfg = TrainConfig(
        hp["epochs"], hp["batch_size"], hp["lr"], hp["momentum"], args.lr_decay, hp["reg"]
    )
    init_key, data_key = jax.random.split(jax.random.PRNGKey(args.seed))
    model, params, autodiff_grads = _model(args, ds.name, X, C, hp["hidden"], dtype, init_key)
    if args.head == "fused":  # the hand gradient through linear_cross_entropy's rule
        model = model._replace(grads=functools.partial(model.grads, head="fused"))
    common = dict(X_test=X_test, y_test=ds.y_test, devices=args.devices, model=model)

    def run_one(label, grad_fn, p0, **kw):
        bar = _progress(label, cfg.epochs, args.quiet)
        try:
            return fit(p0, X, ds.y, cfg, data_key, grad_fn=grad_fn, on_epoch=bar, **common, **kw)
        finally:
            bar.close()

    both, hist = args.gradients == "both", {}
    if args.gradients in ("hand", "both"):
        hist["hand"] = run_one("hand", model.grads, params, snapshots=both)
    if args.gradients in ("autodiff", "both"):
        probe = model.grads if both else None
        hist["autodiff"] = run_one(
            "autodiff", autodiff_grads, params, snapshots=both, probe_fn=probe
        )
    report: dict[str, Any] = {
        "dataset": ds.name,
        "config": _config(hp, args, X, X_test, C),
        "runs": {name: _run_summary(h) for name, h in hist.items()},
        "max_step_grad_diff": None,
        "param_diff": None,
        "control_diff": None,
        "devices": args.devices,
    }
    agreement = {
        "checked": False,
        "passed": False,
        "why": f"--grad {args.gradients}: one run, nothing compared (--grad both compares the "
        "hand gradients with autodiff's at every step)",
    }
    if both:
        # the control: autodiff again, from parameters moved by a relative 1e-12 (or 1 ulp)
        rel = max(1e-12, float(jnp.finfo(dtype).eps))
        control = run_one("control", autodiff_grads, _moved(params, rel, args.seed), snapshots=True)
        ad = hist["autodiff"].snapshots
        report["max_step_grad_diff"] = hist["autodiff"].max_grad_diff
        report["param_diff"] = _rel_norms(hist["hand"].snapshots, ad)
        report["control_diff"] = _rel_norms(control.snapshots, ad)
        report["control_perturbation"] = rel
        agreement = _agreement(report, args.dtype)
    report["agreement"] = agreement
    return report


def _rel_norms(a: list[np.ndarray], b: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)) for x, y in zip(a, b)]


class _NoBar:
    def __call__(self, *a):
        pass

    def close(self):
        pass


def _progress(label: str, epochs: int, quiet: bool):
    if quiet:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    bar = tqdm(total=epochs, desc=f"{label:9s}", unit="epoch", leave=False, disable=None)

    def update(e, loss, acc):
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", refresh=False)

    update.close = bar.close
    return update


def _print_summary(report: dict) -> None:
    for name, r in report["runs"].items():
        test = "" if r["test_accuracy"] is None else f", test {r['test_accuracy']:.4f}"
        print(
            f"{name:9s} loss {r['loss'][-1]:.4f}, train {r['train_accuracy']:.4f}{test} "
            f"({r['seconds']:.1f} s)"
        )
    if not report["agreement"]["checked"]:
        print(f"agreement not checked: {report['agreement']['why']}")
    if report["max_step_grad_diff"] is not None:
        a = report["agreement"]
        limit = a["step_grad_limit"]
        verdict = "PASSED" if a["passed"] else "FAILED"
        limit_text = "no limit set" if limit is None else f"limit {limit:g}"
        print(
            f"{verdict}: at every step the hand gradient differed from autodiff's by at most "
            f"{report['max_step_grad_diff']:.3g} ({limit_text}), and the final accuracies by "
            f"{a['accuracy_gap']:.4f} (limit 0.01). For scale: the parameters of the two runs "
            f"ended {report['param_diff'][-1]:.3g} apart, two autodiff runs started a rounding "
            f"apart {report['control_diff'][-1]:.3g}."
        )


def plot_training(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    both = report["param_diff"] is not None
    fig, axes = plt.subplots(1, 3 if both else 1, figsize=(13 if both else 5, 3.8), dpi=100)
    axes = np.atleast_1d(axes)
    styles = {
        "hand": dict(color="tab:blue", lw=2.5, alpha=0.6),
        "autodiff": dict(color="tab:orange", lw=1, ls="--"),
    }
    for name, r in runs.items():
        axes[0].plot(range(1, len(r["loss"]) + 1), r["loss"], label=name, **styles[name])
    axes[0].set(
        xlabel="epoch",
        ylabel="mean minibatch loss",
        yscale="log",
        title=f"{report['dataset']}: loss",
    )
    axes[0].legend()
    if both:
        for name, r in runs.items():
            acc = r["train_accuracy_per_epoch"]
            axes[1].plot(range(1, len(acc) + 1), acc, label=f"{name} (train)", **styles[name])
            if r["test_accuracy"] is not None:
                axes[1].axhline(
                    r["test_accuracy"],
                    label=f"{name}: final test",
                    lw=1,
                    color=styles[name]["color"],
                    ls=":",
                )
        axes[1].set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0.5, 1.005))
        axes[1].legend(fontsize=8, loc="lower right")
        e = range(1, len(report["param_diff"]) + 1)
        floor = 1e-18
        axes[2].plot(
            e, np.maximum(report["param_diff"], floor), color="tab:blue", label="hand vs autodiff"
        )
        axes[2].plot(
            e,
            np.maximum(report["control_diff"], floor),
            ls="--",
            color="tab:gray",
            label="control: autodiff vs autodiff, start moved "
            f"{report['control_perturbation']:.0e}",
        )
        axes[2].set(
            xlabel="epoch",
            ylabel="relative parameter difference",
            yscale="log",
            title="divergence: gradients vs dynamics",
        )
        axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.3g}" if math.isfinite(x) else str(x)
    return str(x)


def _jump_note(diff: list[float], step_gap: float) -> str:
    """Name a one-epoch jump of the hand-vs-autodiff difference, if there is one."""
    ratios = [b / a for a, b in itertools.pairwise(diff) if a > 0]
    if not ratios or max(ratios) < 100:
        return ""
    e = ratios.index(max(ratios)) + 2
    return (
        f" At epoch {e} the difference jumps {max(ratios):.0f}x in one epoch: the mark of"
        f" a discrete event (a ReLU input changing sign in one run only, say) amplifying"
        f" rounding, not of a gradient error, which (a) bounds by {step_gap:.2g} at every"
        f" step."
    )


def _model_line(cfg: dict) -> str:
    return _body_line(cfg) + (
        "; the hand gradient's output layer by handgrad.linear_cross_entropy's streaming rule"
        " (--head fused)"
        if cfg.get("head") == "fused"
        else ""
    )


def _body_line(cfg: dict) -> str:
    if cfg.get("model") == "attention":
        T = cfg["tokens"]
        return (
            f"One self-attention layer over {T} tokens of {cfg['D'] // T} features"
            f" (handgrad.attn's hand backward), a residual, then the two-layer ReLU MLP head"
            f" (N, T·F, H, C) = ({cfg['N']}, {cfg['D']}, {cfg['hidden']}, {cfg['C']})"
        )
    return (
        f"Two-layer ReLU MLP, (N, D, H, C) = ({cfg['N']}, {cfg['D']}, {cfg['hidden']}, {cfg['C']})"
    )


def training_markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        f"# handgrad train: {report['dataset']}"
        + (", attention model" if cfg.get("model") == "attention" else ""),
        "",
        _model_line(cfg) + f", {cfg['dtype']}, minibatch SGD: {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, lr {cfg['lr']}, momentum {cfg['momentum']}, lr decay "
        f"{cfg['lr_decay']}, reg {cfg['reg']}, seed {cfg['seed']}, {report['devices']} "
        f"device(s). Each epoch is one jitted `lax.scan`.",
        "",
        "| gradients | final loss | train accuracy | test accuracy | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in report["runs"].items():
        lines.append(
            f"| {name} | {r['loss'][-1]:.4f} | {r['train_accuracy']:.4f} | "
            f"{_fmt(r['test_accuracy'])} | {r['seconds']:.2f} |"
        )
    lines += ["", "![loss curves](loss_curves.png)", ""]
    if not report["agreement"]["checked"]:
        lines += ["## Hand vs autodiff: not checked", "", report["agreement"]["why"] + ".", ""]
    if report["max_step_grad_diff"] is not None:
        a = report["agreement"]
        pd, cd = report["param_diff"], report["control_diff"]
        lines += [
            "## Hand vs autodiff: "
            + ("✅ the hand gradient agrees" if a["passed"] else "❌ DISAGREE"),
            "",
            "The verdict rests on (a) and (c); (b) is shown, not judged: it cannot tell a"
            " gradient error from the dynamics' own amplification of rounding.",
            "",
            f"- **(a) every step (judged):** at each of the autodiff run's steps the hand"
            f" gradient, evaluated at the same parameters and batch, differs by at most"
            f" **{report['max_step_grad_diff']:.3g}** (relative to each leaf's natural scale,"
            f" worst leaf) against a limit of {a['step_grad_limit']:g}: "
            + ("within it." if a["step_grads_agree"] else "**beyond it**."),
            f"- **(c) accuracy (judged):** the final accuracies differ by"
            f" {a['accuracy_gap']:.4f} (limit 0.01).",
            f"- **(b) trajectories (shown):** two runs with the same data and start drift apart"
            f" as training amplifies rounding differences. Hand vs autodiff: the relative"
            f" parameter difference goes {pd[0]:.3g} → {pd[-1]:.3g} (first → last epoch). The"
            f" control, autodiff against autodiff started {report['control_perturbation']:.0e}"
            f" apart, goes {cd[0]:.3g} → {cd[-1]:.3g}. "
            + (
                "The hand-vs-autodiff drift stays at or below the control's: no sign of"
                " anything but rounding."
                if pd[-1] <= 10 * max(cd[-1], 1e-300)
                else "Here the hand-vs-autodiff drift ends larger than the control's, so"
                " read (a): it bounds the gradient difference at every step."
            )
            + _jump_note(pd, report["max_step_grad_diff"]),
            "",
            "Picture: blue is always the hand-gradient run, orange autodiff; in the right"
            " panel, blue is the hand-vs-autodiff difference and gray the control. The"
            " progress bars while training are the three runs: hand, autodiff and the control.",
        ]
    return "\n".join(lines) + "\n"
