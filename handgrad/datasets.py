"""Data for `handgrad train`: the classic spiral, scikit-learn's digits, or your .npz."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Dataset", "digits", "load", "load_npz", "spiral"]


class Dataset(NamedTuple):
    name: str
    X: np.ndarray  # (N, D)
    y: np.ndarray  # (N,)
    X_test: np.ndarray | None
    y_test: np.ndarray | None


def spiral(points_per_class: int = 100, classes: int = 3, seed: int = 0) -> Dataset:
    """The 2-D spiral of the CS231n case study: `classes` arms, radius 0..1, noisy angle."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for j in range(classes):
        r = np.linspace(0.0, 1.0, points_per_class)
        t = (
            np.linspace(j * 4, (j + 1) * 4, points_per_class)
            + rng.standard_normal(points_per_class) * 0.2
        )
        X.append(np.c_[r * np.sin(t), r * np.cos(t)])
        y.append(np.full(points_per_class, j))
    return Dataset("spiral", np.concatenate(X), np.concatenate(y).astype(np.int32), None, None)


def digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits, standardised on the training split, with a
    stratified held-out split. Needs the `datasets` extra."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise RuntimeError(
            "the digits dataset needs scikit-learn: pip install 'handgrad[datasets]'"
        ) from e
    data = load_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(
        data.data, data.target, test_size=test_fraction, random_state=seed, stratify=data.target
    )
    mean, std = X_tr.mean(axis=0), X_tr.std(axis=0)
    std[std == 0] = 1.0  # constant border pixels
    return Dataset(
        "digits",
        (X_tr - mean) / std,
        y_tr.astype(np.int32),
        (X_te - mean) / std,
        y_te.astype(np.int32),
    )


def _check_xy(X, y, where: str, xname: str, yname: str):
    if X.ndim != 2:
        raise ValueError(f"{where}: {xname} must be (N, D), a 2-D array; got shape {X.shape}")
    if y.ndim != 1:
        raise ValueError(f"{where}: {yname} must be (N,), a 1-D array; got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"{where}: {yname} must be (N,) = ({X.shape[0]},) to match {xname} "
            f"(N, D) = {X.shape}; got {y.shape}"
        )
    if X.shape[0] == 0:
        raise ValueError(f"{where}: {xname} must have at least one row (N >= 1)")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{where}: {xname} must hold real numbers; got dtype {X.dtype}")
    if not np.all(np.isfinite(X)):
        i = tuple(int(k) for k in np.argwhere(~np.isfinite(X))[0])
        raise ValueError(f"{where}: {xname} must be finite; got {X[i]} at index {list(i)}")
    if not np.issubdtype(y.dtype, np.integer):
        hint = ""
        if (
            np.issubdtype(y.dtype, np.floating)
            and np.all(np.isfinite(y))
            and np.all(y == np.round(y))
        ):
            hint = (
                f" (its values are whole numbers: save them as integers, "
                f"np.savez(..., {yname}={yname}.astype(int)))"
            )
        raise ValueError(
            f"{where}: {yname} must hold integer class labels; got dtype {y.dtype}{hint}"
        )


def load_npz(path: str | Path) -> Dataset:
    """An .npz with `X` (N, D) floats and `y` (N,) integer labels 0..C-1 (every class
    present), optionally `X_test`, `y_test`. Loaded without pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # an .npz is a zip archive
        raise ValueError(
            f"{path}: not an .npz archive (an .npz is a zip file written by np.savez; "
            f"this file starts with {magic!r})"
        )
    try:
        f = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz without pickle ({e})") from e
    if not hasattr(f, "files"):
        raise ValueError(f"{path}: a single .npy array, not an .npz archive of X and y")
    with f:
        missing = [k for k in ("X", "y") if k not in f.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {missing}; expected 'X' (N, D) and "
                f"'y' (N,); found {sorted(f.files)}"
            )
        try:  # arrays load lazily: an object array fails here, not at np.load
            X, y = f["X"], f["y"]
            X_test = f["X_test"] if "X_test" in f.files else None
            y_test = f["y_test"] if "y_test" in f.files else None
        except ValueError as e:
            raise ValueError(f"{path}: cannot be loaded without pickle ({e})") from e
    _check_xy(X, y, str(path), "X", "y")
    C = int(y.max()) + 1
    present = np.unique(y)
    if y.min() < 0 or len(present) != C:
        absent = sorted(set(range(C)) - set(present.tolist()))
        raise ValueError(
            f"{path}: y must hold the labels 0..C-1 (C = {C}), every class present;"
            f" got min {int(y.min())}" + (f", absent {absent[:10]}" if absent else "")
        )
    if (X_test is None) != (y_test is None):
        raise ValueError(f"{path}: give both X_test and y_test, or neither")
    if X_test is not None:
        _check_xy(X_test, y_test, str(path), "X_test", "y_test")
        if X_test.shape[1] != X.shape[1]:
            raise ValueError(
                f"{path}: X_test must be (N, D) with D = {X.shape[1]} as X; got {X_test.shape}"
            )
        if y_test.min() < 0 or y_test.max() >= C:
            raise ValueError(f"{path}: y_test must hold labels in [0, C) = [0, {C})")
        y_test = y_test.astype(np.int32)
    return Dataset(path.stem, X.astype(np.float64), y.astype(np.int32), X_test, y_test)


def load(name: str, seed: int = 0) -> Dataset:
    """'spiral', 'digits', or a path to an .npz."""
    if name == "spiral":
        return spiral(seed=seed)
    if name == "digits":
        return digits(seed=seed)
    if name.endswith(".npz"):
        return load_npz(name)
    raise ValueError(f"dataset must be spiral, digits or a PATH.npz; got {name!r}")
