"""Arbitrary-precision evidence for a finding on a scalar function: its partial
derivatives at the finding's point from mpmath (40 digits, the function written in
mpmath's own terms), beside JAX's from the same rule (jvp or vjp, first or second
order). A bug confirmed by finite differences at three steps and by mpmath is a bug; one
that mpmath contradicts is a handgrad false alarm.

Only functions in MPMATH are covered: an mpmath expression per JAX function, of its
float arguments in the audit's order."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.runtime import enable_x64

__all__ = ["MPMATH", "evidence"]

DPS = 40


def _table():
    import mpmath as mp

    return {**_elementary(mp), **_special(mp), **_stats(mp)}


def _elementary(mp):
    n = "jax.numpy."
    return {
        n + "sin": mp.sin, n + "cos": mp.cos, n + "tan": mp.tan,
        n + "arcsin": mp.asin, n + "arccos": mp.acos, n + "arctan": mp.atan,
        n + "sinh": mp.sinh, n + "cosh": mp.cosh, n + "tanh": mp.tanh,
        n + "arcsinh": mp.asinh, n + "arccosh": mp.acosh, n + "arctanh": mp.atanh,
        n + "exp": mp.exp, n + "exp2": lambda x: mp.power(2, x), n + "expm1": mp.expm1,
        n + "log": mp.log, n + "log2": lambda x: mp.log(x, 2),
        n + "log10": mp.log10, n + "log1p": mp.log1p, n + "sqrt": mp.sqrt,
        n + "cbrt": mp.cbrt, n + "square": lambda x: x * x,
        n + "reciprocal": lambda x: 1 / x, n + "sinc": lambda x: mp.sincpi(x),
        n + "hypot": lambda x, y: mp.hypot(x, y), n + "arctan2": lambda y, x: mp.atan2(y, x),
        n + "logaddexp": lambda x, y: mp.log(mp.exp(x) + mp.exp(y)),
        n + "logaddexp2": lambda x, y: mp.log(mp.power(2, x) + mp.power(2, y), 2),
        n + "power": lambda x, y: mp.power(x, y), n + "i0": lambda x: mp.besseli(0, x),
    }  # fmt: skip


def _reg_inc_beta(mp, a, b, x):
    return mp.betainc(a, b, 0, x, regularized=True)


def _lower_gamma(mp, a, x):
    return mp.gammainc(a, 0, x, regularized=True)


def _upper_gamma(mp, a, x):
    return mp.gammainc(a, x, mp.inf, regularized=True)


def _special(mp):
    s = "jax.scipy.special."
    return {
        s + "gamma": mp.gamma, s + "gammaln": lambda x: mp.log(abs(mp.gamma(x))),
        s + "digamma": mp.digamma, s + "erf": mp.erf, s + "erfc": mp.erfc,
        s + "erfinv": mp.erfinv, s + "expit": lambda x: 1 / (1 + mp.exp(-x)),
        s + "logit": lambda p: mp.log(p / (1 - p)), s + "ndtr": mp.ncdf,
        s + "log_ndtr": lambda x: mp.log(mp.ncdf(x)),
        s + "ndtri": lambda p: mp.sqrt(2) * mp.erfinv(2 * p - 1),
        s + "xlogy": lambda x, y: x * mp.log(y), s + "xlog1py": lambda x, y: x * mp.log1p(y),
        s + "entr": lambda x: -x * mp.log(x), s + "beta": mp.beta,
        s + "betaln": lambda a, b: mp.log(abs(mp.beta(a, b))),
        s + "betainc": lambda a, b, x: _reg_inc_beta(mp, a, b, x),
        s + "gammainc": lambda a, x: _lower_gamma(mp, a, x),
        s + "gammaincc": lambda a, x: _upper_gamma(mp, a, x),
        s + "spence": lambda x: mp.polylog(2, 1 - x),
        s + "zeta": lambda x, q: mp.zeta(x, q), s + "i0": lambda x: mp.besseli(0, x),
        s + "i0e": lambda x: mp.besseli(0, x) * mp.exp(-abs(x)),
        s + "i1": lambda x: mp.besseli(1, x),
        s + "i1e": lambda x: mp.besseli(1, x) * mp.exp(-abs(x)),
        s + "expi": mp.ei, s + "exp1": mp.e1,
        s + "hyp1f1": mp.hyp1f1, s + "hyp2f1": mp.hyp2f1,
        s + "boxcox": lambda x, lm: mp.expm1(lm * mp.log(x)) / lm if lm else mp.log(x),
        s + "boxcox1p": lambda x, lm: mp.expm1(lm * mp.log1p(x)) / lm if lm else mp.log1p(x),
        s + "rel_entr": lambda x, y: x * mp.log(x / y),
        s + "sinc": lambda x: mp.sincpi(x),
    }  # fmt: skip


def _stats(mp):
    st = "jax.scipy.stats."

    def beta_logpdf(x, a, b):
        return (a - 1) * mp.log(x) + (b - 1) * mp.log1p(-x) - mp.log(mp.beta(a, b))

    return {
        st + "beta.cdf": lambda x, a, b: _reg_inc_beta(mp, a, b, x),
        st + "beta.sf": lambda x, a, b: 1 - _reg_inc_beta(mp, a, b, x),
        st + "beta.logcdf": lambda x, a, b: mp.log(_reg_inc_beta(mp, a, b, x)),
        st + "beta.logsf": lambda x, a, b: mp.log(1 - _reg_inc_beta(mp, a, b, x)),
        st + "beta.logpdf": beta_logpdf,
        st + "beta.pdf": lambda x, a, b: mp.exp(beta_logpdf(x, a, b)),
        st + "chi2.cdf": lambda x, k: _lower_gamma(mp, k / 2, x / 2),
        st + "chi2.sf": lambda x, k: _upper_gamma(mp, k / 2, x / 2),
        st + "chi2.logsf": lambda x, k: mp.log(_upper_gamma(mp, k / 2, x / 2)),
        st + "gamma.cdf": lambda x, a: _lower_gamma(mp, a, x),
        st + "norm.cdf": mp.ncdf, st + "norm.logcdf": lambda x: mp.log(mp.ncdf(x)),
        st + "norm.ppf": lambda p: mp.sqrt(2) * mp.erfinv(2 * p - 1),
        st + "cauchy.ppf": lambda q: mp.tan(mp.pi * (q - mp.mpf(1) / 2)),
    }  # fmt: skip


MPMATH = None  # filled on first use (mpmath is an extra: imported only then)


def _functions():
    global MPMATH
    if MPMATH is None:
        MPMATH = _table()
    return MPMATH


def _jax_partials(fn, at, mode, order, dtype):
    """JAX's partial derivatives at the point, through the rule under test: order 1, one
    per argument; order 2, the matrix of second partials."""
    with enable_x64():
        xs = tuple(jnp.asarray(a, dtype) for a in at)
        n = len(xs)
        e = [tuple(jnp.asarray(float(i == k), dtype) for k in range(n)) for i in range(n)]

        def first(*a):
            if mode == "jvp":
                return jnp.stack([jax.jvp(fn, a, e[i])[1] for i in range(n)])
            return jnp.stack(jax.vjp(fn, *a)[1](jnp.ones((), dtype)))

        if order == 1:
            return np.asarray(first(*xs), np.float64)
        return np.stack([np.asarray(jax.jvp(first, xs, e[j])[1], np.float64) for j in range(n)])


def _mp_partials(f, at, order):
    import mpmath as mp

    n = len(at)

    def real(v):
        if isinstance(v, mp.mpc):  # complex on one side: the point is its domain's edge
            raise ValueError("not real on both sides of the point (the edge of its domain)")
        return float(v)

    with mp.workdps(DPS):
        x = [mp.mpf(a) for a in at]
        if order == 1:
            out = [mp.diff(f, x, tuple(int(k == i) for k in range(n))) for i in range(n)]
            return np.array([real(v) for v in out])
        out = [
            [
                real(mp.diff(f, x, tuple(int(k == i) + int(k == j) for k in range(n))))
                for i in range(n)
            ]
            for j in range(n)
        ]
        return np.array(out)


def evidence(f: dict) -> dict | None:
    """{"mpmath", "jax", "agrees", "text"} for a finding at a scalar point of a function
    in the table, or None (no table entry, a vector point, a flag set)."""
    at = f.get("point", {}).get("at")
    table = _functions()
    if (
        f["function"] not in table
        or not at
        or f["point"].get("with")
        or "complex" in f["point"].get("kind", "")
    ):
        return None
    mod, _, attr = f["function"].rpartition(".")
    import importlib

    fn = getattr(importlib.import_module(mod), attr)
    if len(at) > 4 or _arity(table[f["function"]]) not in (None, len(at)):
        return None  # an argument held at an integer by the audit: not this expression
    try:
        want = _mp_partials(table[f["function"]], at, f["order"])
    except (ValueError, ZeroDivisionError, ArithmeticError, TypeError) as e:  # no value
        return {"mpmath": None, "jax": None, "agrees": None, "text": f"mpmath: {e}"}
    try:
        got = _jax_partials(fn, at, f["mode"], f["order"], jnp.dtype(f["dtype"]))
    except Exception as e:  # JAX's rule raised at the point: the finding says so already
        return {"mpmath": want.tolist(), "jax": None, "agrees": None, "text": str(e)[:200]}
    tol = 1e-6 if f["dtype"] == "float64" else 1e-2
    scale = np.maximum(np.abs(want), 1e-300)
    finite = np.isfinite(want)
    with np.errstate(invalid="ignore"):
        close = np.where(finite, np.abs(got - want) <= tol * np.maximum(scale, 1e-8), True)
    agrees = bool(np.all(close)) and bool(np.all(np.isfinite(got[finite])))
    text = f"mpmath ({DPS} digits): {_fmt(want)}; JAX's {f['mode']} rule: {_fmt(got)}" + (
        "" if finite.all() else "; mpmath is not finite at some partial"
    )
    return {"mpmath": _clean(want), "jax": _clean(got), "agrees": agrees, "text": text}


def _arity(fn) -> int | None:
    """Required positional parameters of an mpmath expression (None: not inspectable)."""
    import inspect

    try:
        ps = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    n = [p for p in ps if p.kind in kinds and p.default is inspect.Parameter.empty]
    return None if any(p.kind == p.VAR_POSITIONAL for p in ps) else len(n)


def _fmt(a) -> str:
    return np.array2string(np.asarray(a), precision=7, separator=", ")


def _clean(a):
    return [None if not math.isfinite(v) else v for v in np.asarray(a, np.float64).ravel()]
