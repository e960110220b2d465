"""Check a differentiation *rule*: a `jax.custom_vjp` or `jax.custom_jvp` function, or a
hand-written backward (or tangent) pass of a vector-valued function.

    results = check_vjp(f, *primals)                  # f's own rule (custom_vjp/custom_jvp)
    results = check_vjp(f, *primals, vjp=my_bwd)      # my_bwd(*primals, ct) -> input cts
    results = check_jvp(f, *primals, jvp=my_jvp)      # my_jvp(primals, tangents) -> (y, ẏ)

Both reduce a rule to the gradient checks of `jax_ref.check`, so the verdicts (three
outcomes, precision budgets, the finite-difference oracle that stands alone, kinks) are the
same:

* A VJP rule maps a cotangent ȳ to Jᵀȳ, which is the gradient of the scalar pairing
  ⟨ȳ, f(x)⟩. With ȳ random (Gaussian, each output leaf's cotangent of norm ~1; never all
  ones, which lets a rule that permutes or ignores ȳ pass), the rule's cotangents are
  checked as the gradient of that pairing: against autodiff of the *reference* (never
  through the rule under test) and against central differences of f's forward pass along
  random directions u, which is the dot-product test ⟨ȳ, J·u⟩ = ⟨Jᵀȳ, u⟩.
* A JVP rule maps a tangent u to J·u. Per input leaf, a few random tangents in that leaf
  alone: the output tangents are compared element by element with the reference's JVP
  (autodiff), and ⟨ȳ, J·u_r⟩ with central differences of ⟨ȳ, f(x + Σ τ_r u_r)⟩ in τ.

The reference defaults to the undecorated primal of a `custom_vjp`/`custom_jvp` function
(`f.fun`), or to `f` itself when the rule is passed explicitly; with neither, autodiff of
f would be the rule itself, so only finite differences judge. A reference that cannot be
differentiated gives inconclusive autodiff results (and the finite differences judge).

Contract checks, each its own result (`oracle` names the check, `parameter` the leaf):

* ``primal``: the rule's primal output equals f's (and the reference's);
* ``structure``: the cotangents (tangents) have the inputs' (outputs') tree, shapes and
  dtypes; an integer input takes a `float0` or `None` cotangent;
* ``jit``: the rule under `jax.jit` equals the rule run eagerly;
* ``vmap``: the rule under `jax.vmap` over a batch of 3 points and cotangents equals the
  rule at each point;
* ``composed``: a scalar loss that calls f twice (at x and at a rescaled x) and feeds the
  outputs through other operations, differentiated by `jax.grad` through the rule, agrees
  with the same loss through the reference (or with finite differences): catches rules
  right alone and wrong in a graph (a residual kept in a Python global, a tangent rule that
  cannot be transposed);
* ``second_order`` (`check_vjp(..., order=2)`): the JVP of the rule's VJP along a random
  tangent agrees with the reference's.

Comparisons of the rule with itself (jit, vmap) use the dtype's table tolerance: they
differ only by rounding order.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.check import (
    ORACLES,
    CheckResult,
    _autodiff_results,
    _fd_results,
    _is_float,
    _judge,
    _leaf_name,
    _to64,
    compare,
    enable_x64,
    raise_on_problems,
)
from jax_ref.tolerances import tolerance

__all__ = [
    "CONTRACTS",
    "RuleCheck",
    "assert_jvp",
    "assert_vjp",
    "check_jvp",
    "check_vjp",
    "load_checks",
    "run_rule_checks",
]

_SELF_REFERENCE = "no reference: autodiff of f would be the rule under test itself"
CONTRACTS = ("primal", "structure", "jit", "vmap", "composed", "second_order")
_BATCH = 3  # points in the vmap check


# --- inputs, names, cotangents ---------------------------------------------------------


def _custom(f):
    """The custom_vjp/custom_jvp object behind f (through jax.jit/functools.wraps), or None."""
    seen = 0
    while f is not None and seen < 8:
        if isinstance(f, (jax.custom_vjp, jax.custom_jvp)):
            return f
        f = getattr(f, "__wrapped__", None)
        seen += 1
    return None


def _arg_names(f, n) -> list[str]:
    target = _custom(f)
    target = target.fun if target is not None else f
    try:
        params = [
            p
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    names = [p.name for p in params[:n]]
    return names + [f"arg{i}" for i in range(len(names), n)]


class _Inputs:
    """The primals flattened: every leaf named `argname[.path]`; the float ones are what
    the rule differentiates, the others (integers, booleans) are carried along."""

    def __init__(self, f, primals):
        self.primals = tuple(primals)
        flat, self.treedef = jax.tree.flatten_with_path(self.primals)
        argnames = _arg_names(f, len(self.primals))
        self.leaves = [x for _, x in flat]
        self.names = []
        for path, _ in flat:
            head, rest = argnames[path[0].idx], path[1:]
            self.names.append(head + ("." + _leaf_name(rest) if rest else ""))
        self.fidx = tuple(i for i, x in enumerate(self.leaves) if _is_float(x))
        self.fnames = tuple(self.names[i] for i in self.fidx)
        self.others = tuple(x for i, x in enumerate(self.leaves) if i not in self.fidx)

    def floats(self) -> dict[str, Any]:
        return {self.names[i]: self.leaves[i] for i in self.fidx}

    def key(self):
        return (self.treedef, self.fidx, self.fnames)


def _assemble(key, fl, others):
    """The primals tuple from the float leaves (a dict by name) and the others."""
    treedef, fidx, fnames = key
    n = len(fidx) + len(others)
    it = iter(others)
    leaves = [fl[fnames[fidx.index(i)]] if i in fidx else next(it) for i in range(n)]
    return jax.tree.unflatten(treedef, leaves)


def _random_like(rng, tree, scale_by_rms=False):
    """Gaussian leaves shaped like `tree`'s float leaves (float0-free: others get None)."""

    def one(x):
        if not _is_float(x):
            return None
        n = max(int(np.size(x)), 1)
        r = rng.standard_normal(np.shape(x))
        if scale_by_rms:
            rms = float(np.sqrt(np.mean(np.square(np.asarray(x, np.float64))))) if np.size(x) else 0
            r = r * (rms if rms > 0 and math.isfinite(rms) else 1.0)
        else:
            r = r / math.sqrt(n)  # ‖ȳ‖ ~ 1 per output leaf
        return jnp.asarray(r, jnp.result_type(x))

    return jax.tree.map(one, tree)


def _pair(out, ct):
    """⟨ct, out⟩ over the float leaves of an output pytree."""
    total = 0.0
    for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(ct, is_leaf=lambda x: x is None)):
        if c is None or not _is_float(o):
            continue
        total = total + jnp.sum(c * o)
    return total


def _zero_ct(x):
    if _is_float(x):
        return jnp.zeros(np.shape(x), jnp.result_type(x))
    return np.zeros(np.shape(x), jax.dtypes.float0)


@functools.lru_cache(maxsize=256)
def _pairing_loss(fn, key):
    """loss(fl, others, ct) = ⟨ct, fn(*primals)⟩, one object per (fn, structure): the
    jitted oracles compile once per shape."""

    def loss(fl, others, ct):
        return _pair(fn(*_assemble(key, fl, others)), ct)

    return loss


def _cached(factory, *key):
    try:
        return factory(*key)
    except TypeError:  # an unhashable function: no sharing
        return factory.__wrapped__(*key)


# --- the rule under test ---------------------------------------------------------------


def _normalise_cts(cts, inputs: _Inputs):
    """The rule's input cotangents as a list per flat input leaf (None -> zeros), or a
    reason why they cannot be matched to the inputs."""
    n = len(inputs.primals)
    if n == 1 and not isinstance(cts, (tuple, list)):
        cts = (cts,)
    if not isinstance(cts, (tuple, list)) or len(cts) != n:
        got = (
            f"{type(cts).__name__} of {len(cts)}"
            if isinstance(cts, (tuple, list))
            else type(cts).__name__
        )
        return None, f"the rule must return a tuple of {n} cotangents (one per input); got {got}"
    out = []
    for a, (p, c) in enumerate(zip(inputs.primals, cts)):
        if c is None:
            out += [_zero_ct(x) for x in jax.tree.leaves(p)]
            continue
        pt = jax.tree.structure(p)
        try:
            flat = pt.flatten_up_to(c)
        except (ValueError, TypeError):
            return None, (
                f"the cotangent of input {a} has tree {jax.tree.structure(c)}; its input's is {pt}"
            )
        out += [_zero_ct(x) if ci is None else ci for x, ci in zip(jax.tree.leaves(p), flat)]
    return out, ""


def _structure_problems(cts, inputs: _Inputs) -> list[str]:
    problems = []
    for name, x, c in zip(inputs.names, inputs.leaves, cts):
        want_dt = jnp.result_type(x) if _is_float(x) else jax.dtypes.float0
        got_dt = getattr(c, "dtype", None)
        if np.shape(c) != np.shape(x):
            problems.append(f"{name}: shape {np.shape(c)}, want {np.shape(x)}")
        elif got_dt != want_dt and not (not _is_float(x) and c is None):
            problems.append(
                f"{name}: dtype {got_dt}, want "
                + (jnp.dtype(want_dt).name if _is_float(x) else "float0")
            )
    return problems


def _rule_from_vjp(f, vjp):
    """rule(*primals, ct) -> cotangents as returned (not yet normalised)."""
    if vjp is not None:
        return vjp

    def rule(*args):
        *primals, ct = args
        _, pullback = jax.vjp(f, *primals)
        return pullback(ct)

    return rule


def _as_custom_vjp(f, vjp, inputs: _Inputs):
    """f with `vjp` registered as its rule (for the composed, jit and vmap checks)."""
    if vjp is None:
        return f
    g = jax.custom_vjp(lambda *p: f(*p))

    def fwd(*p):
        return f(*p), p

    def bwd(p, ct):
        cts, why = _normalise_cts(vjp(*p, ct), inputs)
        if cts is None:
            raise ValueError(why)
        leaves = [c if _is_float(x) else None for x, c in zip(jax.tree.leaves(p), cts)]
        return tuple(jax.tree.unflatten(inputs.treedef, leaves))

    g.defvjp(fwd, bwd)
    return g


def _failure(name, oracle, note, shape=()) -> CheckResult:
    return CheckResult(
        name,
        oracle,
        "-",
        tuple(shape),
        math.nan,
        math.inf,
        0.0,
        (),
        math.nan,
        math.nan,
        "failed",
        note,
        math.nan,
    )


def _inconclusive(name, oracle, note, dtype="-", shape=()) -> CheckResult:
    return CheckResult(
        name,
        oracle,
        dtype,
        tuple(shape),
        math.nan,
        math.nan,
        0.0,
        (),
        math.nan,
        math.nan,
        "inconclusive",
        note,
        math.inf,
    )


def _passed(name, oracle, note) -> CheckResult:
    return CheckResult(
        name, oracle, "-", (), 0.0, 0.0, 0.0, (), math.nan, math.nan, "passed", note, 0.0
    )


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if b else a


def _err(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _same_tree(name, oracle, got, want, note="") -> list[CheckResult]:
    """Leaf by leaf, `got` against `want` at the dtype's table tolerance."""
    out = []
    gl, wl = jax.tree.leaves(got), jax.tree.leaves(want)
    if len(gl) != len(wl):
        return [_failure(name, oracle, f"{len(gl)} leaves where {len(wl)} were expected")]
    paths = [p for p, _ in jax.tree.leaves_with_path(want)]
    for p, g, w in zip(paths, gl, wl):
        if not _is_float(w):
            continue
        leaf = name + ("." + _leaf_name(p) if p else "")
        if np.shape(g) != np.shape(w):
            out.append(_failure(leaf, oracle, f"shape {np.shape(g)}, want {np.shape(w)}"))
            continue
        dt = jnp.result_type(w)
        out.append(compare(leaf, oracle, g, w, dt, tolerance(dt), note=note))
    return out


def _output_names(out) -> list[str]:
    return [
        "output" + ("." + _leaf_name(p) if p else "") for p, _ in jax.tree.leaves_with_path(out)
    ]


# --- check_vjp ---------------------------------------------------------------------------


def _reference_for(f, rule_given, reference):
    if reference is not None:
        return reference, "the reference you gave"
    c = _custom(f)
    if c is not None:
        return c.fun, f"autodiff of the undecorated primal of the {type(c).__name__} function"
    if rule_given:
        return f, "autodiff of f"
    return None, ""


def _no_reference(inputs, oracle, why) -> list[CheckResult]:
    return [
        _inconclusive(
            n,
            oracle,
            why,
            jnp.dtype(jnp.result_type(inputs.leaves[i])).name,
            np.shape(inputs.leaves[i]),
        )
        for n, i in zip(inputs.fnames, inputs.fidx)
    ]


def check_vjp(
    f: Callable[..., Any],
    *primals: Any,
    vjp: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    seed: int = 0,
    order: int = 1,
    oracles: Sequence[str] = ORACLES,
    contracts: Sequence[str] = CONTRACTS,
    directions: int = 2,
    max_tries: int = 12,
    scales: dict[str, float] | None = None,
) -> list[CheckResult]:
    """Check a VJP rule of `f` at `primals`: `vjp(*primals, ct) -> (ct_0, ..., ct_n)` if
    given, else f's own rule (a `custom_vjp` or `custom_jvp` function is checked by its
    rule). One result per float input leaf and oracle (`autodiff` of the reference,
    `finite_difference` of f's forward pass), then the contract checks (module docstring).
    `order=2` adds the second-order check. `scales` ({input leaf name: float}) replaces
    the natural error scale of those leaves' cotangents (default: max|ȳ|·max|y| in low
    precision, 0 in float64; see `_natural_scales`)."""
    if not callable(f):
        raise ValueError(f"f must be a callable; got {type(f).__name__}")
    if vjp is not None and not callable(vjp):
        raise ValueError(
            f"vjp must be a callable (*primals, ct) -> cotangents; got {type(vjp).__name__}"
        )
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2; got {order!r}")
    if not primals:
        raise ValueError("check_vjp needs at least one primal input")
    unknown = (set(oracles) - set(ORACLES)) | (set(contracts) - set(CONTRACTS))
    if unknown:
        raise ValueError(
            f"unknown oracles or contracts {sorted(unknown)}; known {ORACLES + CONTRACTS}"
        )
    inputs = _Inputs(f, primals)
    if not inputs.fidx:
        raise ValueError("check_vjp: no floating-point input to differentiate")
    unknown_leaves = set(scales or {}) - set(inputs.fnames)
    if unknown_leaves:
        raise ValueError(
            f"scales must name float input leaves {list(inputs.fnames)}; "
            f"got {sorted(unknown_leaves)}"
        )
    rng = np.random.default_rng(seed)
    ref, ref_why = _reference_for(f, vjp is not None, reference)
    rule = _rule_from_vjp(f, vjp)
    results: list[CheckResult] = []

    # the rule's primal output, and the cotangent ȳ
    try:
        out = f(*primals)
    except Exception as e:
        raise ValueError(f"f(*primals) raised {_err(e)}") from e
    ct = _random_like(rng, out)
    ct_full = jax.tree.map(
        lambda o, c: _zero_ct(o) if c is None else c, out, ct, is_leaf=lambda x: x is None
    )
    if not any(_is_float(o) for o in jax.tree.leaves(out)):
        raise ValueError("check_vjp: f has no floating-point output")

    if "primal" in contracts:
        results += _primal_vjp(f, vjp, ref, primals, out)

    try:
        raw = rule(*primals, ct_full)
    except Exception as e:
        results.append(_failure("rule", "structure", f"the rule raised {_err(e)}"))
        return results
    cts, why = _normalise_cts(raw, inputs)
    if cts is None:
        results.append(_failure("cotangents", "structure", why))
        return results
    problems = _structure_problems(cts, inputs)
    if "structure" in contracts:
        results.append(
            _failure("cotangents", "structure", "; ".join(problems))
            if problems
            else _passed("cotangents", "structure", "tree, shapes and dtypes match the inputs'")
        )
    bad_shape = {
        n for n, x, c in zip(inputs.names, inputs.leaves, cts) if np.shape(c) != np.shape(x)
    }
    hand = {
        n: jnp.asarray(cts[i]) for n, i in zip(inputs.fnames, inputs.fidx) if n not in bad_shape
    }
    for n in bad_shape:
        results.append(_failure(n, "structure", "cotangent of the wrong shape: not compared"))
    fl, others, key = inputs.floats(), inputs.others, inputs.key()
    fl_ok = {n: v for n, v in fl.items() if n in hand}

    if fl_ok and len(fl_ok) == len(fl):
        pairing = _cached(_pairing_loss, f, key)
        natural = {
            **_natural_scales(fl, out, ct),
            **{k: float(v) for k, v in (scales or {}).items()},
        }
        if "autodiff" in oracles:
            if ref is None:
                results += _no_reference(inputs, "autodiff", _SELF_REFERENCE)
            else:
                results += _autodiff_or_inconclusive(
                    _cached(_pairing_loss, ref, key),
                    fl,
                    hand,
                    (others, ct),
                    inputs,
                    ref_why,
                    natural,
                )
        if "finite_difference" in oracles:
            results += _fd_results(
                pairing,
                fl,
                hand,
                (others, ct),
                seed=seed,
                directions=directions,
                max_tries=max_tries,
                scales=natural,
            )

    g = _as_custom_vjp(f, vjp, inputs)
    if "jit" in contracts:
        results += _jit_check(rule, primals, ct_full, cts, inputs)
    if "vmap" in contracts:
        results += _vmap_check(rule, inputs, out, rng)
    if "composed" in contracts:
        results += _composed_check(g, ref, inputs, out, rng, seed, ref_why)
    if order == 2 and "second_order" in contracts:
        results += _second_order(rule, ref, inputs, ct_full, rng, out)
    return results


def _max_abs(tree) -> float:
    vals = [
        float(np.max(np.abs(np.asarray(x, np.float64)), initial=0.0))
        for x in jax.tree.leaves(tree)
        if _is_float(x)
    ]
    return max(vals, default=0.0)


def _natural_scales(fl, out, *cts) -> dict[str, float]:
    """Each low-precision input leaf's natural error scale in a VJP check: max|ȳ|·max|y|.

    A VJP's cancelling terms round at the scale of the cotangent times the outputs'
    magnitude, not at that of the (possibly tiny) result: tanh's ȳ(1 − y²) and softmax's
    y ⊙ (ȳ − ⟨ȳ, y⟩) lose everything to rounding at saturation, in the rule under test and
    in any correct one (measured: JAX's own tanh, sigmoid and softmax rules in float32 at
    |x| ≥ 5 err by up to 5e-6 of the largest entry, 10-20x autodiff of an exp-based
    reference). float64 leaves keep 0 (relative to the values): rounding is negligible
    there, and detection stays at full power. The price in low precision: a rule whose
    result is small against max|ȳ|·max|y| without cancelling (log at large x) is judged at
    that scale, which `detectable_rel_err` states."""
    s = sum(_max_abs(c) for c in cts) * _max_abs(out)
    return {n: (0.0 if jnp.result_type(x) == jnp.float64 else s) for n, x in fl.items()}


def _autodiff_or_inconclusive(
    loss, fl, hand, args, inputs, why_ref, scales=None
) -> list[CheckResult]:
    try:
        res = _autodiff_results(loss, fl, args, None, hand, scales, 0.0)
    except Exception as e:
        return _no_reference(
            inputs, "autodiff", f"the reference could not be differentiated ({_err(e)})"
        )
    return [dataclasses.replace(r, note=_join(why_ref, r.note)) for r in res]


def _primal_vjp(f, vjp, ref, primals, out) -> list[CheckResult]:
    results = []
    if vjp is None:
        try:
            rule_out = jax.vjp(f, *primals)[0]
        except Exception as e:
            return [_failure("output", "primal", f"jax.vjp(f) raised {_err(e)}")]
        results += _same_tree(
            "output", "primal", rule_out, out, "the rule's primal output against f(*primals)"
        )
    if ref is not None and ref is not f:
        try:
            ref_out = ref(*primals)
        except Exception as e:
            return [*results, _failure("output", "primal", f"the reference raised {_err(e)}")]
        results += _same_tree("output", "primal", out, ref_out, "f(*primals) against the reference")
    return results


def _jit_check(rule, primals, ct, cts, inputs) -> list[CheckResult]:
    try:
        jitted = jax.jit(rule)(*primals, ct)
        jcts, why = _normalise_cts(jitted, inputs)
    except Exception as e:
        return [_failure("cotangents", "jit", f"the rule raised under jax.jit: {_err(e)}")]
    if jcts is None:
        return [_failure("cotangents", "jit", why)]
    out = []
    for n, i in zip(inputs.fnames, inputs.fidx):
        out += _same_tree(n, "jit", jcts[i], cts[i], "jax.jit(rule) against the rule run eagerly")
    return out


def _batch_points(inputs: _Inputs, rng):
    """_BATCH points: the given one and two nearby (float leaves scaled by 1 ± ~5 %)."""
    pts = [inputs.leaves]
    for _ in range(_BATCH - 1):
        pts.append(
            [
                jnp.asarray(
                    np.asarray(x, np.float64) * (1 + 0.05 * rng.standard_normal(np.shape(x))),
                    jnp.result_type(x),
                )
                if _is_float(x)
                else x
                for x in inputs.leaves
            ]
        )
    return pts


def _vmap_check(rule, inputs, out, rng) -> list[CheckResult]:
    pts = _batch_points(inputs, rng)
    cts_b = [
        jax.tree.map(
            lambda o, c: _zero_ct(o) if c is None else c,
            out,
            _random_like(rng, out),
            is_leaf=lambda x: x is None,
        )
        for _ in pts
    ]
    try:
        singles = []
        for p, c in zip(pts, cts_b):
            s, why = _normalise_cts(rule(*jax.tree.unflatten(inputs.treedef, p), c), inputs)
            if s is None:
                return [_failure("cotangents", "vmap", why)]
            singles.append(s)
    except Exception as e:
        return [_failure("cotangents", "vmap", f"the rule raised at a batch point: {_err(e)}")]
    stacked = [np.stack([np.asarray(p[i]) for p in pts]) for i in range(len(inputs.leaves))]
    stacked = [jnp.asarray(s) if _is_float(x) else s for s, x in zip(stacked, inputs.leaves)]
    ct_stack = jax.tree.map(lambda *c: jnp.stack(c), *cts_b)

    def per_point(*flat_and_ct):
        *flat, c = flat_and_ct
        cts, why = _normalise_cts(rule(*jax.tree.unflatten(inputs.treedef, list(flat)), c), inputs)
        if cts is None:
            raise ValueError(why)
        return [cts[i] for i in inputs.fidx]  # None -> zeros inside: vmap batches them

    try:
        bcts = jax.vmap(per_point)(*stacked, ct_stack)
    except Exception as e:
        return [_failure("cotangents", "vmap", f"the rule raised under jax.vmap: {_err(e)}")]
    res = []
    for j, (n, i) in enumerate(zip(inputs.fnames, inputs.fidx)):
        want = np.stack([np.asarray(s[i], np.float64) for s in singles])
        got = bcts[j]
        if np.shape(got) != np.shape(want):
            res.append(
                _failure(
                    n, "vmap", f"batched cotangent of shape {np.shape(got)}, want {want.shape}"
                )
            )
            continue
        dt = jnp.result_type(inputs.leaves[i])
        res.append(
            compare(
                n,
                "vmap",
                got,
                want,
                dt,
                tolerance(dt),
                note=f"jax.vmap(rule) over {_BATCH} points against the rule at each",
            )
        )
    return res


@functools.lru_cache(maxsize=256)
def _composed_loss(fn, key):
    """A scalar loss calling fn twice, at x and at x·(1 + w), through other operations:
    L = ⟨c1, y1⟩ + σ ⟨c2, tanh(y2 / σ)⟩ with y1 = fn(x), y2 = fn(x ⊙ (1 + w))."""

    def loss(fl, others, c1, c2, w, sigma):
        x1 = _assemble(key, fl, others)
        fl2 = {k: v * (1 + w[k]).astype(v.dtype) for k, v in fl.items()}
        x2 = _assemble(key, fl2, others)
        y1, y2 = fn(*x1), fn(*x2)
        squashed = jax.tree.map(
            lambda y, s: jnp.tanh(y / s.astype(y.dtype)) * s.astype(y.dtype) if _is_float(y) else y,
            y2,
            sigma,
        )
        return _pair(y1, c1) + _pair(squashed, c2)

    return loss


def _composed_check(g, ref, inputs, out, rng, seed, ref_why) -> list[CheckResult]:
    fl, others, key = inputs.floats(), inputs.others, inputs.key()
    c1, c2 = _random_like(rng, out), _random_like(rng, out)
    c1 = jax.tree.map(
        lambda o, c: _zero_ct(o) if c is None else c, out, c1, is_leaf=lambda x: x is None
    )
    c2 = jax.tree.map(
        lambda o, c: _zero_ct(o) if c is None else c, out, c2, is_leaf=lambda x: x is None
    )
    w = {k: np.asarray(0.25 * rng.uniform(-1, 1, np.shape(v)), np.float64) for k, v in fl.items()}
    sigma = jax.tree.map(
        lambda y: (
            np.float64(max(float(np.sqrt(np.mean(np.square(np.asarray(y, np.float64))))), 1e-30))
            if _is_float(y) and np.size(y)
            else np.float64(1.0)
        ),
        out,
    )
    args = (others, c1, c2, w, sigma)
    loss_g = _cached(_composed_loss, g, key)
    try:
        hand = jax.jit(jax.grad(loss_g))(fl, *args)
    except Exception as e:
        return [
            _failure("rule", "composed", f"jax.grad of a loss through the rule raised {_err(e)}")
        ]
    note = "jax.grad of a loss calling f twice, through the rule"
    natural = _natural_scales(fl, out, c1, c2)
    if ref is not None:
        res = _autodiff_or_inconclusive(
            _cached(_composed_loss, ref, key), fl, hand, args, inputs, ref_why, natural
        )
        if all(
            r.status != "inconclusive" or "could not be differentiated" not in r.note for r in res
        ):
            return [
                dataclasses.replace(r, oracle="composed", note=_join(note, r.note)) for r in res
            ]
    res = _fd_results(loss_g, fl, hand, args, seed=seed, directions=2, max_tries=12, scales=natural)
    return [
        dataclasses.replace(
            r, oracle="composed", note=_join(note + ", against finite differences", r.note)
        )
        for r in res
    ]


def _second_order(rule, ref, inputs, ct, rng, out) -> list[CheckResult]:
    """JVP of the rule's VJP along a random tangent u, against the reference's."""
    if ref is None:
        return _no_reference(inputs, "second_order", "no reference: second derivatives not judged")
    fl, others, key = inputs.floats(), inputs.others, inputs.key()
    u = _random_like(rng, fl, scale_by_rms=True)
    natural = _max_abs(ct) * _max_abs(out)

    def vjp_of(fn_rule):
        def h(fl_):
            cts, why = _normalise_cts(fn_rule(*_assemble(key, fl_, others), ct), inputs)
            if cts is None:
                raise ValueError(why)
            return {n: cts[i] for n, i in zip(inputs.fnames, inputs.fidx)}

        return h

    def ref_rule(*args):
        *p, c = args
        return jax.vjp(ref, *p)[1](c)

    try:
        hand = jax.jvp(vjp_of(rule), (fl,), (u,))[1]
    except Exception as e:
        return [_failure("rule", "second_order", f"jax.jvp of the rule's VJP raised {_err(e)}")]
    try:
        want = jax.jvp(vjp_of(ref_rule), (fl,), (u,))[1]
    except Exception as e:
        return _no_reference(
            inputs, "second_order", f"the reference could not be differentiated twice ({_err(e)})"
        )
    low = any(jnp.result_type(v) != jnp.float64 for v in fl.values())
    golden, why = None, ""
    if low:
        try:
            with enable_x64():
                ct64, fl64, u64 = _to64(ct), _to64(fl), _to64(u)

                def h64(fl_):
                    c = jax.vjp(ref, *_assemble(key, fl_, others))[1](ct64)
                    cts, _ = _normalise_cts(c, inputs)
                    return {n: cts[i] for n, i in zip(inputs.fnames, inputs.fidx)}

                golden = jax.tree.map(
                    lambda a: np.asarray(a, np.float64), jax.jvp(h64, (fl64,), (u64,))[1]
                )
        except Exception as e:
            why = f"the reference could not run in float64 ({_err(e)})"
    res = []
    for n in inputs.fnames:
        dt = jnp.result_type(fl[n])
        # the first-order natural scale, times how far u reaches against x's typical entry
        rms = (
            float(np.sqrt(np.mean(np.square(np.asarray(fl[n], np.float64)))))
            if np.size(fl[n])
            else 0
        )
        reach = _max_abs(u[n]) / max(rms, 1e-300)
        scale = 0.0 if dt == jnp.float64 else natural * min(reach, 1e6)
        r = _judge(n, hand[n], want[n], None if golden is None else golden[n], dt, scale, why)
        res.append(
            dataclasses.replace(
                r,
                oracle="second_order",
                note=_join("JVP of the rule's VJP along a random tangent", r.note),
            )
        )
    return res


# --- check_jvp -----------------------------------------------------------------------------

_TANGENTS = 2  # random tangents per input leaf


def _rule_from_jvp(f, jvp):
    if jvp is not None:
        return jvp

    def rule(primals, tangents):
        return jax.jvp(f, tuple(primals), tuple(tangents))

    return rule


def _tangent_tuple(inputs: _Inputs, only: str | None, u):
    """Tangents for every input: `u` in leaf `only`, zeros elsewhere (float0 for ints)."""
    leaves = []
    for i, x in enumerate(inputs.leaves):
        if i in inputs.fidx and inputs.names[i] == only:
            leaves.append(u)
        else:
            leaves.append(_zero_ct(x))
    return tuple(jax.tree.unflatten(inputs.treedef, leaves))


@functools.lru_cache(maxsize=256)
def _tau_loss(fn, key, fnames):
    """⟨ȳ, fn(x + Σ_r τ_{k,r} U_{k,r})⟩ as a function of τ (a dict by input leaf)."""

    def loss(tau, fl, others, U, ct):
        moved = {}
        for n in fnames:
            dx = jnp.tensordot(tau[n].astype(U[n].dtype), U[n], axes=1)
            moved[n] = fl[n] + dx.astype(fl[n].dtype)
        return _pair(fn(*_assemble(key, moved, others)), ct)

    return loss


def check_jvp(
    f: Callable[..., Any],
    *primals: Any,
    jvp: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    seed: int = 0,
    oracles: Sequence[str] = ORACLES,
    contracts: Sequence[str] = ("primal", "structure", "jit", "vmap", "composed"),
    max_tries: int = 12,
) -> list[CheckResult]:
    """Check a JVP (tangent) rule of `f` at `primals`: `jvp(primals, tangents) -> (y, ẏ)`
    (the `custom_jvp` convention) if given, else f's own (a `custom_jvp` function's rule).
    Per float input leaf, `_TANGENTS` random tangents in that leaf alone: `autodiff`
    compares the output tangents with the reference's JVP, `finite_difference` compares
    ⟨ȳ, ẏ⟩ with central differences of f. Then the contract checks."""
    if not callable(f):
        raise ValueError(f"f must be a callable; got {type(f).__name__}")
    if jvp is not None and not callable(jvp):
        raise ValueError(
            f"jvp must be a callable (primals, tangents) -> (y, ẏ); got {type(jvp).__name__}"
        )
    if not primals:
        raise ValueError("check_jvp needs at least one primal input")
    unknown = (set(oracles) - set(ORACLES)) | (set(contracts) - set(CONTRACTS[:-1]))
    if unknown:
        raise ValueError(
            f"unknown oracles or contracts {sorted(unknown)}; known {ORACLES + CONTRACTS[:-1]}"
        )
    c = _custom(f)
    if jvp is None and isinstance(c, jax.custom_vjp):
        raise ValueError(
            "f is a jax.custom_vjp function: it has no forward-mode (JVP) rule; "
            "check it with check_vjp"
        )
    inputs = _Inputs(f, primals)
    if not inputs.fidx:
        raise ValueError("check_jvp: no floating-point input to differentiate")
    rng = np.random.default_rng(seed)
    ref, ref_why = _reference_for(f, jvp is not None, reference)
    rule = _rule_from_jvp(f, jvp)
    out = f(*primals)
    ct = _random_like(rng, out)
    fl, others, key = inputs.floats(), inputs.others, inputs.key()
    U = {
        n: jnp.stack([_random_like(rng, fl[n], scale_by_rms=True) for _ in range(_TANGENTS)])
        for n in inputs.fnames
    }
    results: list[CheckResult] = []
    hand_t = {}
    for n in inputs.fnames:
        rows = []
        for r in range(_TANGENTS):
            try:
                y, t = rule(inputs.primals, _tangent_tuple(inputs, n, U[n][r]))
            except Exception as e:
                results.append(_failure(n, "structure", f"the rule raised {_err(e)}"))
                return results
            rows.append((y, t))
        hand_t[n] = rows
    y0, t0 = hand_t[inputs.fnames[0]][0]
    if "primal" in contracts:
        results += _same_tree(
            "output", "primal", y0, out, "the rule's primal output against f(*primals)"
        )
        if ref is not None and ref is not f:
            try:
                results += _same_tree(
                    "output", "primal", out, ref(*primals), "f against the reference"
                )
            except Exception as e:
                results.append(_failure("output", "primal", f"the reference raised {_err(e)}"))
    problems = []
    try:
        flat_t = jax.tree.structure(out).flatten_up_to(t0)
    except (ValueError, TypeError):
        flat_t = None
        problems.append(
            f"tangent tree {jax.tree.structure(t0)}, want the output's {jax.tree.structure(out)}"
        )
    if flat_t is not None:
        for nm, o, t in zip(_output_names(out), jax.tree.leaves(out), flat_t):
            if not _is_float(o):
                continue
            if t is None or np.shape(t) != np.shape(o):
                problems.append(
                    f"{nm}: tangent shape {None if t is None else np.shape(t)}, want {np.shape(o)}"
                )
            elif jnp.result_type(t) != jnp.result_type(o):
                problems.append(
                    f"{nm}: tangent dtype {jnp.result_type(t)}, want {jnp.result_type(o)}"
                )
    if "structure" in contracts:
        results.append(
            _failure("tangents", "structure", "; ".join(problems))
            if problems
            else _passed("tangents", "structure", "tree, shapes and dtypes match the output's")
        )
    if problems and any("shape" in p or "tree" in p for p in problems):
        return results

    def flat_float(t):
        return [
            np.asarray(x, np.float64).ravel()
            for o, x in zip(jax.tree.leaves(out), jax.tree.structure(out).flatten_up_to(t))
            if _is_float(o)
        ]

    if "autodiff" in oracles:
        if ref is None:
            results += _no_reference(inputs, "autodiff", _SELF_REFERENCE)
        else:
            results += _jvp_autodiff(ref, ref_why, inputs, U, hand_t, flat_float, out)
    if "finite_difference" in oracles:
        tau = {}
        grads = {}
        scales = {}
        for n in inputs.fnames:
            dt = jnp.result_type(fl[n])
            pair = []
            nat = []
            for _, t in hand_t[n]:
                pair.append(
                    float(
                        sum(
                            np.sum(np.asarray(c, np.float64) * np.asarray(tt, np.float64))
                            for c, tt in zip(flat_float(ct), flat_float(t))
                        )
                    )
                )
                nat.append(
                    float(
                        sum(
                            np.sum(np.abs(np.asarray(c, np.float64) * np.asarray(tt, np.float64)))
                            for c, tt in zip(flat_float(ct), flat_float(t))
                        )
                    )
                )
            tau[n] = jnp.zeros(_TANGENTS, dt)
            grads[n] = jnp.asarray(np.array(pair), dt)
            scales[n] = max(nat)
        loss = _cached(_tau_loss, f, key, inputs.fnames)
        res = _fd_results(
            loss,
            tau,
            grads,
            (fl, others, U, ct),
            seed=seed,
            directions=2,
            max_tries=max_tries,
            scales=scales,
        )
        results += [
            dataclasses.replace(
                r,
                shape=np.shape(fl[r.parameter]),
                note=_join(f"⟨ȳ, J·u⟩ along {_TANGENTS} random tangents in this input", r.note),
            )
            for r in res
        ]
    if "jit" in contracts:
        try:
            _, jt = jax.jit(rule)(
                inputs.primals, _tangent_tuple(inputs, inputs.fnames[0], U[inputs.fnames[0]][0])
            )
            results += _same_tree(
                "tangents", "jit", jt, t0, "jax.jit(rule) against the rule run eagerly"
            )
        except Exception as e:
            results.append(_failure("tangents", "jit", f"the rule raised under jax.jit: {_err(e)}"))
    if "vmap" in contracts:
        results += _vmap_jvp(rule, inputs, rng)
    if "composed" in contracts:
        g = f if jvp is None else _as_custom_jvp(f, jvp)
        results += _composed_check(g, ref, inputs, out, rng, seed, ref_why)
    return results


def _as_custom_jvp(f, jvp):
    g = jax.custom_jvp(lambda *p: f(*p))
    g.defjvp(lambda p, t: jvp(p, t))
    return g


def _jvp_autodiff(ref, ref_why, inputs, U, hand_t, flat_float, out):
    fl = inputs.floats()
    res = []
    for n in inputs.fnames:
        try:
            want = [
                jax.jvp(ref, inputs.primals, _tangent_tuple(inputs, n, U[n][r]))[1]
                for r in range(_TANGENTS)
            ]
        except Exception as e:
            res += [
                _inconclusive(
                    n, "autodiff", f"the reference could not be differentiated ({_err(e)})"
                )
            ]
            continue
        golden, why = None, ""
        low = any(jnp.result_type(o) != jnp.float64 for o in jax.tree.leaves(out) if _is_float(o))
        if low:
            try:
                with enable_x64():
                    p64 = _to64(inputs.primals)
                    golden = [
                        np.concatenate(
                            flat_float(
                                jax.jvp(ref, p64, _to64(_tangent_tuple(inputs, n, U[n][r])))[1]
                            )
                        )
                        for r in range(_TANGENTS)
                    ]
            except Exception as e:
                why = f"the reference could not run in float64 ({_err(e)})"
        got = np.concatenate([np.concatenate(flat_float(t)) for _, t in hand_t[n]])
        w = np.concatenate([np.concatenate(flat_float(t)) for t in want])
        gd = None if golden is None else np.concatenate(golden)
        odt = [jnp.result_type(o) for o in jax.tree.leaves(out) if _is_float(o)]
        low_dt = min(odt, key=lambda d: jnp.finfo(d).bits)
        r = _judge(n, got, w, gd, low_dt, 0.0, why)
        res.append(
            dataclasses.replace(
                r,
                shape=np.shape(fl[n]),
                note=_join(f"{_TANGENTS} random tangents in this input, against {ref_why}", r.note),
            )
        )
    return res


def _vmap_jvp(rule, inputs, rng):
    pts = _batch_points(inputs, rng)
    n0 = inputs.fnames[0]
    i0 = inputs.fidx[0]
    us = [_random_like(rng, inputs.leaves[i0], scale_by_rms=True) for _ in pts]
    try:
        singles = [
            rule(tuple(jax.tree.unflatten(inputs.treedef, p)), _tangent_tuple(inputs, n0, u))[1]
            for p, u in zip(pts, us)
        ]
    except Exception as e:
        return [_failure("tangents", "vmap", f"the rule raised at a batch point: {_err(e)}")]
    stacked = [
        jnp.stack([jnp.asarray(p[i]) for p in pts])
        if _is_float(x)
        else np.stack([np.asarray(p[i]) for p in pts])
        for i, x in enumerate(inputs.leaves)
    ]
    u_stack = jnp.stack(us)

    def per_point(flat, u):
        p = tuple(jax.tree.unflatten(inputs.treedef, list(flat)))
        return rule(p, _tangent_tuple(inputs, n0, u))[1]

    try:
        batched = jax.vmap(per_point)(stacked, u_stack)
    except Exception as e:
        return [_failure("tangents", "vmap", f"the rule raised under jax.vmap: {_err(e)}")]
    want = jax.tree.map(lambda *t: np.stack([np.asarray(x, np.float64) for x in t]), *singles)
    return _same_tree(
        "tangents",
        "vmap",
        batched,
        want,
        f"jax.vmap(rule) over {_BATCH} points against the rule at each",
    )


# --- assertions ----------------------------------------------------------------------------


def assert_vjp(f, *primals, allow_inconclusive: bool = False, **kwargs) -> list[CheckResult]:
    """`check_vjp`, raising an AssertionError that names each failed input leaf or contract,
    the oracle, the worst element (or direction) and both values; and each input leaf no
    oracle judged (unless `allow_inconclusive`)."""
    return raise_on_problems(
        check_vjp(f, *primals, **kwargs), "VJP rule", "inputs", allow_inconclusive
    )


def assert_jvp(f, *primals, allow_inconclusive: bool = False, **kwargs) -> list[CheckResult]:
    """`check_jvp`, raising as `assert_vjp` does."""
    return raise_on_problems(
        check_jvp(f, *primals, **kwargs), "JVP rule", "inputs", allow_inconclusive
    )


# --- declared checks (`handgrad check PATH.py`) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuleCheck:
    """One rule check declared in a user's file (`CHECKS = [RuleCheck(...), ...]`).

    `primals` is a tuple of inputs, or a callable returning one (run only when the check
    runs). `kind` is "vjp" (check_vjp; `rule` is the explicit vjp, if any) or "jvp"
    (check_jvp; `rule` is the explicit jvp). `reference`, `order` and `seed` are passed on."""

    name: str
    f: Callable[..., Any]
    primals: Any
    kind: str = "vjp"
    rule: Callable[..., Any] | None = None
    reference: Callable[..., Any] | None = None
    order: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ("vjp", "jvp"):
            raise ValueError(
                f"RuleCheck {self.name!r}: kind must be 'vjp' or 'jvp'; got {self.kind!r}"
            )
        if not callable(self.f):
            raise ValueError(
                f"RuleCheck {self.name!r}: f must be a callable; got {type(self.f).__name__}"
            )

    def args(self) -> tuple:
        p = self.primals() if callable(self.primals) else self.primals
        return tuple(p) if isinstance(p, (tuple, list)) else (p,)

    def run(self) -> list[CheckResult]:
        primals = self.args()
        if self.kind == "vjp":
            return check_vjp(
                self.f,
                *primals,
                vjp=self.rule,
                reference=self.reference,
                seed=self.seed,
                order=self.order,
            )
        return check_jvp(self.f, *primals, jvp=self.rule, reference=self.reference, seed=self.seed)

    def case(self) -> str:
        """The inputs in a few words: shapes and dtypes."""
        parts = []
        for x in jax.tree.leaves(self.args()):
            parts.append(f"{jnp.result_type(x).name}{list(np.shape(x))}")
        return f"{self.kind} " + " ".join(parts)


def load_checks(target: str) -> tuple[str, list[RuleCheck]]:
    """The `CHECKS` a user's file (PATH.py) or module (a.b.c) declares: (its name, checks).
    Raises ValueError saying what is wrong with it (no traceback for the CLI to show)."""
    import importlib
    import importlib.util
    import os
    import sys

    if target.endswith(".py") or os.sep in target:
        if not os.path.isfile(target):
            raise ValueError(f"no such file: {target}")
        name = "handgrad_checks_" + os.path.splitext(os.path.basename(target))[0]
        spec = importlib.util.spec_from_file_location(name, target)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ValueError(f"{target} raised while importing: {_err(e)}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise ValueError(f"cannot import module {target!r}: {_err(e)}") from e
    checks = getattr(module, "CHECKS", None)
    if checks is None:
        raise ValueError(
            f"{target} defines no CHECKS: a list of jax_ref.RuleCheck(name, f, primals, ...)"
        )
    checks = list(checks) if isinstance(checks, (list, tuple)) else None
    if not checks or not all(isinstance(c, RuleCheck) for c in checks):
        raise ValueError(f"{target}: CHECKS must be a non-empty list of jax_ref.RuleCheck")
    names = [c.name for c in checks]
    if len(set(names)) != len(names):
        raise ValueError(f"{target}: two checks share a name; names must be unique")
    stem = os.path.splitext(os.path.basename(target))[0] if target.endswith(".py") else target
    return stem, checks


def run_rule_checks(source: str, checks: list[RuleCheck], on_check=None) -> dict:
    """Every declared check, as a report shaped like `jax_ref.sweep.run_check`'s. A check
    that raises (a rule, f or reference that errs at these inputs) is a failed result."""
    from jax_ref.sweep import unjudged_leaves, versions

    rows = []
    for c in checks:
        try:
            results = c.run()
            case = c.case()
        except Exception as e:
            results, case = [_failure("rule", "structure", f"the check raised {_err(e)}")], "-"
        rows += [
            {"derivation": source, "function": c.name, "case": case, **r.to_dict()} for r in results
        ]
        if on_check is not None:
            on_check(c)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "failed", "inconclusive")}
    judged_rows = [r for r in rows if r["oracle"] in ORACLES]
    unjudged = unjudged_leaves(judged_rows)
    return {
        "passed": counts["failed"] == 0 and not unjudged,
        "seed": min((c.seed for c in checks), default=0),
        "versions": versions(),
        "derivations": [source],
        "counts": counts,
        "unjudged": unjudged,
        "checks": rows,
        "ledger": [],
    }
