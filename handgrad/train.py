"""Minibatch SGD on hand-derived gradients: one jitted `lax.scan` per epoch.

The loop is generic in `grad_fn(params, X, y, reg) -> (loss, grads)`: `handgrad.mlp_grads`
by default, `jax_ref.mlp_grads` for the autodiff run. Python iterates over epochs only
(so a progress bar can show each), never over steps. Deterministic for a seed: the
shuffles come from `jax.random` keys split per epoch.

With `devices > 1` each minibatch is sharded over a 1-D mesh along its batch axis
(`jax.sharding`), parameters replicated; XLA inserts the all-reduce the sums over N need.
Nothing in the gradients changes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from handgrad import attn_model
from handgrad import validate as v
from handgrad.mlp import Params, mlp_forward, mlp_grads
from handgrad.softmax_ce import softmax_forward

__all__ = [
    "ATTENTION",
    "MLP",
    "History",
    "Model",
    "SGDState",
    "TrainConfig",
    "accuracy",
    "fit",
    "make_epoch",
    "mesh_for",
    "natural_scales",
]


class TrainConfig(NamedTuple):
    epochs: int = 100
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    lr_decay: float = 1.0  # lr_e = lr · lr_decay^e
    reg: float = 1e-3


class SGDState(NamedTuple):
    params: Params  # any pytree of parameters (Params for the MLP)
    velocity: Params


class Model(NamedTuple):
    """What the loop needs of a model: `forward(params, X) -> logits (N, C)`, the hand
    `grads(params, X, y, reg) -> (loss, grads)`, `scales(params, X, y, reg)` (each
    gradient leaf's natural error scale, for the agreement probe), `check(params, X)`
    (validation, up front) and `classes(params) -> C`."""

    name: str
    forward: Callable
    grads: Callable
    scales: Callable
    check: Callable
    classes: Callable


def _check_mlp(params, X):
    params, X = v.check_mlp(params, X)
    return Params(*params), X


class History(NamedTuple):
    params: Params
    loss: list[float]  # mean minibatch loss, per epoch
    train_accuracy: list[float]  # per epoch
    test_accuracy: float | None
    max_grad_diff: float | None  # largest step disagreement with `probe_fn`, if given
    seconds: float
    snapshots: list[np.ndarray] | None  # flat float64 parameters after each epoch


def natural_scales(params: Params, X, y, reg) -> Params:
    """The magnitude each gradient leaf's rounding lives on: the backward pass on absolute
    values, dz2 -> (a2 + onehot)/N, every product |A|·|B|. Near convergence a2 - onehot
    cancels and the gradient is far smaller than the numbers its rounding came from."""
    z1 = X @ params.W1 + params.b1
    a1 = jnp.maximum(z1, 0)
    a2, _ = softmax_forward(a1 @ params.W2 + params.b2)
    dz2 = (a2 + jax.nn.one_hot(y, a2.shape[1], dtype=a2.dtype)) / X.shape[0]
    dz1 = (dz2 @ jnp.abs(params.W2).T) * (z1 >= 0)
    big = [
        jnp.abs(X).T @ dz1 + 2 * reg * jnp.abs(params.W1),
        dz1.sum(0),
        a1.T @ dz2 + 2 * reg * jnp.abs(params.W2),
        dz2.sum(0),
    ]
    return Params(*(jnp.max(b) for b in big))


MLP = Model("mlp", mlp_forward, mlp_grads, None, _check_mlp, lambda p: p.W2.shape[1])
ATTENTION = Model(
    "attention",
    attn_model.attention_classifier_forward,
    attn_model.attention_classifier_grads,
    attn_model.attention_classifier_scales,
    attn_model.check_attention_classifier,
    lambda p: p.W2.shape[1],
)


def _rel_diff(a: Params, b: Params, scales: Params):
    """max over leaves of max|a - b| / max(max|b|, natural scale): the norm-wise relative
    disagreement, on the scale the rounding lives on."""
    per = [
        jnp.max(jnp.abs(x - y))
        / jnp.maximum(jnp.maximum(jnp.max(jnp.abs(y)), s), jnp.finfo(y.dtype).tiny)
        for x, y, s in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(scales))
    ]
    return jnp.max(jnp.stack(per))


def mesh_for(devices: int):
    """A 1-D mesh named 'batch' over the first `devices` devices."""
    available = jax.devices()
    if devices > len(available):
        raise ValueError(
            f"devices must be <= the {len(available)} available "
            f"({available[0].platform}); got {devices}"
        )
    return jax.sharding.Mesh(np.array(available[:devices]), ("batch",))


@functools.lru_cache(maxsize=32)  # a second fit with the same settings reuses the compiled epoch
def make_epoch(
    grad_fn: Callable = mlp_grads,
    *,
    batch_size: int,
    momentum: float,
    reg: float,
    probe_fn: Callable | None = None,
    mesh=None,
    scales_fn: Callable | None = None,
):
    """A jitted `epoch(state, X, y, key, lr) -> (state, mean loss, max probe diff)`.

    Each step: (loss, g) = grad_fn(params, X_b, y_b, reg); v = momentum·v − lr·g; params += v.
    With `probe_fn`, the step also evaluates probe_fn at the same parameters and batch and
    records the relative disagreement (for hand-vs-autodiff agreement along a run)."""
    P = jax.sharding.PartitionSpec
    if mesh is not None:
        rows = jax.sharding.NamedSharding(mesh, P("batch", None))
        labels = jax.sharding.NamedSharding(mesh, P("batch"))

    def step(carry, batch):
        state, lr = carry
        Xb, yb = batch
        if mesh is not None:
            Xb = jax.lax.with_sharding_constraint(Xb, rows)
            yb = jax.lax.with_sharding_constraint(yb, labels)
        loss, g = grad_fn(state.params, Xb, yb, reg)
        diff = jnp.zeros((), loss.dtype)
        if probe_fn is not None:
            scales = (scales_fn or natural_scales)(state.params, Xb, yb, reg)
            diff = _rel_diff(probe_fn(state.params, Xb, yb, reg)[1], g, scales).astype(loss.dtype)
        vel = jax.tree.map(lambda u, d: momentum * u - lr * d, state.velocity, g)
        params = jax.tree.map(jnp.add, state.params, vel)
        return (SGDState(params, vel), lr), (loss, diff)

    @jax.jit
    def epoch(state, X, y, key, lr):
        n_batches = X.shape[0] // batch_size
        perm = jax.random.permutation(key, X.shape[0])[: n_batches * batch_size]
        Xs = X[perm].reshape(n_batches, batch_size, X.shape[1])
        ys = y[perm].reshape(n_batches, batch_size)
        (state, _), (losses, diffs) = jax.lax.scan(step, (state, lr.astype(X.dtype)), (Xs, ys))
        return state, losses.mean(), diffs.max()

    return epoch


@functools.partial(jax.jit, static_argnums=0)
def _predict(forward, params, X):
    return jnp.argmax(forward(params, X), axis=1)


def accuracy(params: Params, X, y, forward: Callable = mlp_forward) -> float:
    """Fraction of rows whose largest logit is the label."""
    return float(jnp.mean(_predict(forward, params, X) == y))


def _flat(params) -> np.ndarray:
    return np.concatenate([np.asarray(p, np.float64).ravel() for p in jax.tree.leaves(params)])


def _check_config(config: TrainConfig, dtype) -> None:
    """A ValueError naming the first setting out of range."""
    v.check_reg(config.reg, dtype)
    for name in ("epochs", "batch_size"):
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{name} must be >= 1; got {getattr(config, name)}")
    if not config.lr > 0 or not 0 <= config.momentum < 1 or not config.lr_decay > 0:
        raise ValueError(
            "lr must be > 0, momentum in [0, 1), lr_decay > 0; got "
            f"lr={config.lr}, momentum={config.momentum}, lr_decay={config.lr_decay}"
        )


def fit(
    params: Params,
    X,
    y,
    config: TrainConfig,
    key,
    *,
    grad_fn: Callable | None = None,
    probe_fn: Callable | None = None,
    X_test=None,
    y_test=None,
    devices: int = 1,
    snapshots: bool = False,
    on_epoch: Callable[[int, float, float], None] | None = None,
    model: Model = MLP,
) -> History:
    """Train `params` of `model` (the MLP by default) on (X, y) for `config.epochs` epochs,
    with `grad_fn` (default: the model's hand gradients); see `make_epoch`.

    Arguments are validated once, up front (inside the jitted epoch they cannot raise)."""
    params, X = model.check(params, X)
    grad_fn = model.grads if grad_fn is None else grad_fn
    N, C = X.shape[0], model.classes(params)
    y = v.check_labels(y, N, C, against=f"X (N, D) = {X.shape}")
    _check_config(config, X.dtype)
    batch = min(int(config.batch_size), N)  # a batch larger than the data is the data
    mesh = mesh_for(devices) if devices > 1 else None
    if mesh is not None and batch % devices:
        raise ValueError(f"batch size must be a multiple of devices = {devices}; got {batch}")
    epoch = make_epoch(
        grad_fn,
        batch_size=batch,
        momentum=config.momentum,
        reg=config.reg,
        probe_fn=probe_fn,
        mesh=mesh,
        scales_fn=model.scales,
    )
    X, y = jnp.asarray(X), jnp.asarray(y)
    state = SGDState(params, jax.tree.map(jnp.zeros_like, params))
    losses, accs, snaps, worst = [], [], [], 0.0
    t0 = time.perf_counter()
    for e in range(int(config.epochs)):
        key, sub = jax.random.split(key)
        lr = jnp.asarray(config.lr * config.lr_decay**e)
        state, loss, diff = epoch(state, X, y, sub, lr)
        losses.append(float(loss))
        accs.append(accuracy(state.params, X, y, model.forward))
        worst = max(worst, float(diff))
        if snapshots:
            snaps.append(_flat(state.params))
        if on_epoch is not None:
            on_epoch(e, losses[-1], accs[-1])
    seconds = time.perf_counter() - t0
    test_acc = None if X_test is None else accuracy(state.params, X_test, y_test, model.forward)
    return History(
        state.params,
        losses,
        accs,
        test_acc,
        worst if probe_fn else None,
        seconds,
        snaps if snapshots else None,
    )
