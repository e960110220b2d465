"""The rule checks: a `jax.custom_vjp` / `custom_jvp` rule, or a hand-written backward
(tangent) pass, reduced to the gradient oracles plus the contract checks.

    check_vjp(f, *primals)                  # f's own rule; vjp=my_bwd(*primals, ct) -> cts
    check_jvp(f, *primals, jvp=my_jvp)      # my_jvp(primals, tangents) -> (y, ẏ)

A VJP rule is the gradient of ⟨ȳ, f(x)⟩ for a random ȳ: judged by autodiff of the
*reference* (by default the undecorated primal, never the rule) and by finite differences
of f alone. A JVP rule's tangents against the reference's JVP and differences of f.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.autodiff import golden_value, judge, singular_elements
from jax_ref.contracts import (
    autodiff_or_inconclusive,
    composed_check,
    jit_jvp,
    jit_vjp,
    join,
    jvp_second_order,
    no_reference,
    primal_jvp,
    primal_vjp,
    second_order,
    tangent_problems,
    tangent_structure,
    vmap_jvp,
    vmap_vjp,
)
from jax_ref.finite_difference import finite_difference_results
from jax_ref.finite_difference.along import Along, differences_along
from jax_ref.record import run_check, subject_of
from jax_ref.runtime import OwnCodeError
from jax_ref.tangents import (
    Inputs,
    assemble,
    cached,
    custom_rule_of,
    fill_cotangent,
    natural_scales,
    normalise_cts,
    output_cotangent,
    pair,
    pairing_loss,
    random_like,
    structure_problems,
    tangent_tuple,
)
from jax_ref.trees import error_text, is_float, to64
from jax_ref.verdict import (
    CONTRACTS,
    CheckResult,
    failed_check,
    inconclusive_check,
    passed_check,
)

__all__ = [
    "CONTRACTS",
    "JVP_CONTRACTS",
    "RULE_ORACLES",
    "assert_jvp",
    "assert_vjp",
    "check_jvp",
    "check_vjp",
    "jvp_results",
    "vjp_results",
]


# moved to jax_ref.declared; still importable from here (loaded on first use: declared
# imports this module)
_MOVED = {"RuleCheck", "load_checks", "run_rule_checks"}


def __getattr__(name):
    if name in _MOVED:
        from jax_ref import declared

        return getattr(declared, name)
    raise AttributeError(f"module 'jax_ref.rules' has no attribute {name!r}")


RULE_ORACLES = ("autodiff", "finite_difference")
JVP_CONTRACTS = ("primal", "structure", "jit", "vmap", "composed")
_SELF_REFERENCE = "no reference: autodiff of f would be the rule under test itself"
TANGENTS = 2  # random tangents per input leaf in check_jvp


def _reference_for(f, rule_given, reference):
    """(the reference function, how it was chosen), or (None, "") when there is none."""
    if reference is not None:
        return reference, "the reference you gave"
    c = custom_rule_of(f)
    if c is not None:
        return c.fun, f"autodiff of the undecorated primal of the {type(c).__name__} function"
    if rule_given:
        return f, "autodiff of f"
    return None, ""


def _validate(kind, f, rule, primals, oracles, contracts, known_contracts) -> Inputs:
    """The primals as `Inputs`, or a ValueError naming the argument that is wrong."""
    if not callable(f):
        raise ValueError(f"f must be a callable; got {type(f).__name__}")
    form = "(*primals, ct) -> cotangents" if kind == "vjp" else "(primals, tangents) -> (y, ẏ)"
    if rule is not None and not callable(rule):
        raise ValueError(f"{kind} must be a callable {form}; got {type(rule).__name__}")
    if not primals:
        raise ValueError(f"check_{kind} needs at least one primal input")
    unknown = (set(oracles) - set(RULE_ORACLES)) | (set(contracts) - set(known_contracts))
    if unknown:
        raise ValueError(
            f"unknown oracles or contracts {sorted(unknown)}; "
            f"known {RULE_ORACLES + known_contracts}"
        )
    inputs = Inputs(f, primals)
    for name, x in zip(inputs.names, inputs.leaves):
        if jnp.iscomplexobj(x):
            raise ValueError(
                f"input {name} is {jnp.result_type(x).name}: complex inputs are not checked; "
                "pass the real and imaginary parts as two float inputs"
            )
    if not inputs.fidx:
        raise ValueError(f"check_{kind}: no floating-point input to differentiate")
    return inputs


def _run_theirs(f, primals, reference):
    """f(*primals), and the reference's if given: an exception is theirs, named."""
    for what, fn in (("f", f), ("the reference", reference)):
        if fn is None:
            continue
        try:
            value = fn(*primals)
        except Exception as e:  # the user's function raised at the point: theirs
            raise OwnCodeError(f"{what} raised at the given point: {error_text(e)}") from e
        if fn is f:
            out = value
    return out


# --- check_vjp ---------------------------------------------------------------------------


def _rule_from_vjp(f, vjp):
    """rule(*primals, ct) -> cotangents as returned (not yet normalised)."""
    if vjp is not None:
        return vjp

    def rule(*args):
        *primals, ct = args
        return jax.vjp(f, *primals)[1](ct)

    return rule


def _as_custom_vjp(f, vjp, inputs: Inputs):
    """f with `vjp` registered as its rule (for the composed check)."""
    if vjp is None:
        return f
    g = jax.custom_vjp(lambda *p: f(*p))

    def fwd(*p):
        return f(*p), p

    def bwd(p, ct):
        cts, why = normalise_cts(vjp(*p, ct), inputs)
        if cts is None:
            raise ValueError(why)
        leaves = [c if is_float(x) else None for x, c in zip(jax.tree.leaves(p), cts)]
        return tuple(jax.tree.unflatten(inputs.treedef, leaves))

    g.defvjp(fwd, bwd)
    return g


def _cotangents(rule, primals, ct_full, inputs, contracts):
    """(the rule's cotangents per flat input, the structure results), or (None, results)
    when the rule raised or its cotangents cannot be matched to the inputs."""
    try:
        raw = rule(*primals, ct_full)
    except Exception as e:  # the user's rule raised: reported as theirs
        return None, [failed_check("rule", "structure", f"the rule raised {error_text(e)}")]
    cts, why = normalise_cts(raw, inputs)
    if cts is None:
        return None, [failed_check("cotangents", "structure", why)]
    problems = structure_problems(cts, inputs)
    results = []
    if "structure" in contracts:
        results.append(
            failed_check("cotangents", "structure", "; ".join(problems))
            if problems
            else passed_check(
                "cotangents", "structure", "tree, shapes and dtypes match the inputs'"
            )
        )
    for n, x, c in zip(inputs.names, inputs.leaves, cts):
        if np.shape(c) != np.shape(x):
            why = "cotangent of the wrong shape: not compared"
            results.append(failed_check(n, "structure", why))
    return cts, results


def _vjp_oracles(f, ref, ref_why, inputs, cts, ct, out, oracles, options) -> list[CheckResult]:
    """The rule's cotangents as the gradient of ⟨ȳ, f(x)⟩: autodiff of the reference's
    pairing, and finite differences of f's."""
    hand = {n: jnp.asarray(cts[i]) for n, i in zip(inputs.fnames, inputs.fidx)}
    if any(np.shape(hand[n]) != np.shape(x) for n, x in inputs.floats().items()):
        return []  # a cotangent of the wrong shape: failed by the structure check
    fl, key, args = inputs.floats(), inputs.key(), (inputs.others, ct)
    natural = {**natural_scales(fl, out, ct), **options["scales"]}
    results, still = [], None
    if "autodiff" in oracles:
        if ref is None:
            results += no_reference(inputs, "autodiff", _SELF_REFERENCE)
        else:
            loss = cached(pairing_loss, ref, key)
            results += autodiff_or_inconclusive(loss, fl, hand, args, inputs, ref_why, natural)
            still = singular_elements(loss, fl, args)
    if "finite_difference" in oracles:
        results += finite_difference_results(
            cached(pairing_loss, f, key),
            fl,
            hand,
            args,
            seed=options["seed"],
            directions=options["directions"],
            max_tries=options["max_tries"],
            scales=natural,
            what="f",
            still=still,
        )
    return results


def _scales_of(scales, inputs) -> dict[str, float]:
    unknown = set(scales or {}) - set(inputs.fnames)
    if unknown:
        raise ValueError(
            f"scales must name float input leaves {list(inputs.fnames)}; got {sorted(unknown)}"
        )
    return {k: float(v) for k, v in (scales or {}).items()}


def check_vjp(
    f: Callable[..., Any],
    *primals: Any,
    vjp: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    seed: int = 0,
    order: int = 1,
    oracles: Sequence[str] = RULE_ORACLES,
    contracts: Sequence[str] = CONTRACTS,
    directions: int = 2,
    max_tries: int = 12,
    scales: dict[str, float] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerance_factor: float | None = None,
) -> list[CheckResult]:
    """Check a VJP rule of `f` at `primals`: `vjp(*primals, ct) -> (ct_0, ..., ct_n)` if
    given, else f's own rule. One result per float input leaf and oracle, then the
    contract checks (jax_ref.contracts); `order=2` adds the second-order check. `scales`
    ({input leaf name: float}) replaces those leaves' natural error scale (default:
    max|ȳ|·max|y| in low precision, 0 in float64). `rtol` replaces the relative tolerance
    (the table's, or the precision budget's), `atol` adds an absolute one per element,
    `tolerance_factor` multiplies it: each result carries what was set (`tolerance_set`),
    shown in every message and report."""
    options = dict(
        vjp=vjp,
        reference=reference,
        seed=seed,
        order=order,
        oracles=oracles,
        contracts=contracts,
        directions=directions,
        max_tries=max_tries,
        scales=scales,
    )
    return run_check(
        "check_vjp",
        subject_of(f),
        primals,
        lambda: vjp_results(f, *primals, **options),
        rtol=rtol,
        atol=atol,
        tolerance_factor=tolerance_factor,
    )


def vjp_results(
    f,
    *primals,
    vjp=None,
    reference=None,
    seed=0,
    order=1,
    oracles=RULE_ORACLES,
    contracts=CONTRACTS,
    directions=2,
    max_tries=12,
    scales=None,
) -> list[CheckResult]:
    """`check_vjp`'s work, under whatever tolerance is in force (no record)."""
    inputs = _validate("vjp", f, vjp, primals, oracles, contracts, CONTRACTS)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2; got {order!r}")
    options = dict(seed=seed, directions=directions, max_tries=max_tries)
    options["scales"] = _scales_of(scales, inputs)
    rng = np.random.default_rng(seed)
    ref, ref_why = _reference_for(f, vjp is not None, reference)
    rule = _rule_from_vjp(f, vjp)
    out = _run_theirs(f, primals, reference)
    ct = output_cotangent(rng, out)
    ct_full = fill_cotangent(out, ct)
    if not any(is_float(o) for o in jax.tree.leaves(out)):
        raise ValueError("check_vjp: f has no floating-point output")
    results = primal_vjp(f, vjp, ref, primals, out) if "primal" in contracts else []
    cts, found = _cotangents(rule, primals, ct_full, inputs, contracts)
    results += found
    if cts is None:
        return results
    results += _vjp_oracles(f, ref, ref_why, inputs, cts, ct, out, oracles, options)
    if "jit" in contracts:
        results += jit_vjp(rule, primals, ct_full, cts, inputs)
    if "vmap" in contracts:
        results += vmap_vjp(rule, inputs, out, rng)
    if "composed" in contracts:
        g = _as_custom_vjp(f, vjp, inputs)
        results += composed_check(g, ref, inputs, out, rng, seed, ref_why)
    if order == 2 and "second_order" in contracts:
        results += second_order(rule, ref, inputs, ct_full, rng, out)
    return results


# --- check_jvp -----------------------------------------------------------------------------


def _rule_from_jvp(f, jvp):
    if jvp is not None:
        return jvp

    def rule(primals, tangents):
        return jax.jvp(f, tuple(primals), tuple(tangents))

    return rule


def _as_custom_jvp(f, jvp):
    if jvp is None:
        return f
    g = jax.custom_jvp(lambda *p: f(*p))
    g.defjvp(lambda p, t: jvp(p, t))
    return g


def _flat_float(out, t) -> list[np.ndarray]:
    """The float leaves of an output-shaped tree `t`, raveled, in float64."""
    leaves = jax.tree.structure(out).flatten_up_to(t)
    return [
        np.asarray(x, np.float64).ravel()
        for o, x in zip(jax.tree.leaves(out), leaves)
        if is_float(o)
    ]


def _jvp_autodiff(ref, ref_why, inputs, U, hand_t, out) -> list[CheckResult]:
    """Each input leaf's output tangents against the reference's JVP along the same u."""
    fl, res = inputs.floats(), []
    low_dt = min(
        (jnp.result_type(o) for o in jax.tree.leaves(out) if is_float(o)),
        key=lambda d: jnp.finfo(d).bits,
    )

    def tangents(p, u_all, n, widen=False):
        ts = [tangent_tuple(inputs, n, u) for u in u_all]
        return [jax.jvp(ref, p, to64(t) if widen else t)[1] for t in ts]

    for n in inputs.fnames:
        try:
            want = tangents(inputs.primals, U[n], n)
        except Exception as e:  # the user's reference cannot be differentiated
            why = f"the reference could not be differentiated ({error_text(e)})"
            res.append(inconclusive_check(n, "autodiff", why))
            continue
        golden, why = None, ""
        if low_dt != jnp.float64:
            golden, why = golden_value(
                lambda p, u, n=n: [
                    np.concatenate(_flat_float(out, t)) for t in tangents(p, u, n, True)
                ],
                inputs.primals,
                U[n],
                what="the reference",
            )
        got = np.concatenate([np.concatenate(_flat_float(out, t)) for _, t in hand_t[n]])
        w = np.concatenate([np.concatenate(_flat_float(out, t)) for t in want])
        gd = None if golden is None else np.concatenate(golden)
        r = judge(n, got, w, gd, low_dt, 0.0, why)
        if r.status == "failed" and np.all(np.isfinite(got)):
            r = _jvp_differences(inputs, U, n, out).overrule(r, got, w)
        note = join(f"{TANGENTS} random tangents in this input, against {ref_why}", r.note)
        res.append(dataclasses.replace(r, shape=np.shape(fl[n]), note=note))
    return res


def _outputs_of(f, inputs):
    """fl -> f's float output leaves (a list), the other inputs held as given."""
    key, others = inputs.key(), inputs.others

    def g(fl):
        y = f(*assemble(key, fl, others))
        return [o for o in jax.tree.leaves(y) if is_float(o)]

    return g


def _jvp_differences(inputs, U, n, out, f=None):
    """Central differences of f along each of leaf n's tangents, stacked as the output
    tangents are (the witness when the reference and the rule disagree)."""
    f = f or inputs.f
    fl, parts = inputs.floats(), []
    for u in U[n]:
        t = {k: (u if k == n else jnp.zeros_like(v)) for k, v in fl.items()}
        parts.append(differences_along(_outputs_of(f, inputs), fl, t, what="f"))
    return Along(
        np.concatenate([p.est for p in parts]),
        np.concatenate([p.bound for p in parts]),
        parts[0].precision,
        parts[0].why,
        *(np.concatenate([getattr(p, k) for p in parts]) for k in ("kink0", "left", "right")),
        np.concatenate([p.bound_kink for p in parts]),
    )


def _hand_tangents(rule, inputs, U):
    """{input leaf: [(y, ẏ)] per random tangent}, or (None, a failed result) if it raised."""
    hand_t = {}
    for n in inputs.fnames:
        try:
            hand_t[n] = [rule(inputs.primals, tangent_tuple(inputs, n, u)) for u in U[n]]
        except Exception as e:  # the user's rule raised: reported as theirs
            return None, failed_check(n, "structure", f"the rule raised {error_text(e)}")
    return hand_t, None


@functools.lru_cache(maxsize=256)
def _tau_loss(fn, key, fnames):
    """⟨ȳ, fn(x + Σ_r τ_{k,r} U_{k,r})⟩ as a function of τ (a dict by input leaf)."""

    def loss(tau, fl, others, U, ct):
        moved = {}
        for n in fnames:
            dx = jnp.tensordot(tau[n].astype(U[n].dtype), U[n], axes=1)
            moved[n] = fl[n] + dx.astype(fl[n].dtype)
        return pair(fn(*assemble(key, moved, others)), ct)

    return loss


def _jvp_finite_differences(f, inputs, U, hand_t, ct, out, seed, max_tries):
    """⟨ȳ, J·u_r⟩ of the rule against central differences of ⟨ȳ, f(x + Σ τ_r u_r)⟩ in τ."""
    fl, tau, grads, scales = inputs.floats(), {}, {}, {}
    cts = _flat_float(out, ct)
    for n in inputs.fnames:
        dt = jnp.result_type(fl[n])
        pairs = [[c * t for c, t in zip(cts, _flat_float(out, tt))] for _, tt in hand_t[n]]
        tau[n] = jnp.zeros(TANGENTS, dt)
        grads[n] = jnp.asarray(np.array([float(sum(np.sum(p) for p in ps)) for ps in pairs]), dt)
        scales[n] = max(float(sum(np.sum(np.abs(p)) for p in ps)) for ps in pairs)
    loss = cached(_tau_loss, f, inputs.key(), inputs.fnames)
    args = (fl, inputs.others, U, ct)
    res = finite_difference_results(
        loss, tau, grads, args, seed=seed, max_tries=max_tries, scales=scales
    )
    note = f"⟨ȳ, J·u⟩ along {TANGENTS} random tangents in this input"
    return [
        dataclasses.replace(r, shape=np.shape(fl[r.parameter]), note=join(note, r.note))
        for r in res
    ]


def check_jvp(
    f: Callable[..., Any],
    *primals: Any,
    jvp: Callable[..., Any] | None = None,
    reference: Callable[..., Any] | None = None,
    seed: int = 0,
    order: int = 1,
    oracles: Sequence[str] = RULE_ORACLES,
    contracts: Sequence[str] = JVP_CONTRACTS,
    max_tries: int = 12,
    rtol: float | None = None,
    atol: float | None = None,
    tolerance_factor: float | None = None,
) -> list[CheckResult]:
    """Check a JVP (tangent) rule of `f` at `primals`: `jvp(primals, tangents) -> (y, ẏ)`
    if given, else f's own (a `custom_jvp` function's rule). Per float input leaf,
    TANGENTS random tangents in that leaf alone: `autodiff` compares the output tangents
    with the reference's JVP, `finite_difference` ⟨ȳ, ẏ⟩ with differences of f. Then the
    contract checks (jax_ref.contracts); `order=2` adds the derivative of the rule's
    tangents along a second tangent (`second_order`). `rtol`, `atol` and `tolerance_factor`
    as in `check_vjp`."""
    options = dict(
        jvp=jvp,
        reference=reference,
        seed=seed,
        order=order,
        oracles=oracles,
        contracts=contracts,
        max_tries=max_tries,
    )
    return run_check(
        "check_jvp",
        subject_of(f),
        primals,
        lambda: jvp_results(f, *primals, **options),
        rtol=rtol,
        atol=atol,
        tolerance_factor=tolerance_factor,
    )


def jvp_results(
    f,
    *primals,
    jvp=None,
    reference=None,
    seed=0,
    order=1,
    oracles=RULE_ORACLES,
    contracts=JVP_CONTRACTS,
    max_tries=12,
) -> list[CheckResult]:
    """`check_jvp`'s work, under whatever tolerance is in force (no record)."""
    inputs = _validate("jvp", f, jvp, primals, oracles, contracts, JVP_CONTRACTS)
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2; got {order!r}")
    if jvp is None and isinstance(custom_rule_of(f), jax.custom_vjp):
        raise ValueError(
            "f is a jax.custom_vjp function: it has no forward-mode (JVP) rule; "
            "check it with check_vjp"
        )
    rng = np.random.default_rng(seed)
    ref, ref_why = _reference_for(f, jvp is not None, reference)
    rule = _rule_from_jvp(f, jvp)
    out = _run_theirs(f, primals, reference)
    ct = output_cotangent(rng, out)
    fl = inputs.floats()
    held = _singular_inputs(f, ref, inputs, ct)
    U = _tangents(rng, fl, held)
    hand_t, raised = _hand_tangents(rule, inputs, U)
    if raised is not None:
        return [raised]
    y0, t0 = hand_t[inputs.fnames[0]][0]
    results = primal_jvp(f, ref, primals, y0, out) if "primal" in contracts else []
    problems = tangent_problems(out, t0)
    if "structure" in contracts:
        results.append(tangent_structure(problems))
    if any("shape" in p or "tree" in p for p in problems):
        return results  # nothing to compare the tangents with
    if "autodiff" in oracles:
        if ref is None:
            results += no_reference(inputs, "autodiff", _SELF_REFERENCE)
        else:
            results += _jvp_autodiff(ref, ref_why, inputs, U, hand_t, out)
    if "finite_difference" in oracles:
        results += _jvp_finite_differences(f, inputs, U, hand_t, ct, out, seed, max_tries)
    if "jit" in contracts:
        results += jit_jvp(rule, inputs, U, t0)
    if "vmap" in contracts:
        results += vmap_jvp(rule, inputs, rng)
    if "composed" in contracts:
        results += composed_check(_as_custom_jvp(f, jvp), ref, inputs, out, rng, seed, ref_why)
    if order == 2:
        results += jvp_second_order(rule, ref, inputs, U, rng, out)
    return _note_held(results, held)


def _tangents(rng, fl, held):
    """TANGENTS random tangents per input leaf (entries ~ its rms), 0 where held still."""
    return {
        n: jnp.stack(
            [
                jnp.where(held.get(n, False), 0, random_like(rng, fl[n], scale_by_rms=True))
                for _ in range(TANGENTS)
            ]
        )
        for n in fl
    }


def _note_held(results, held):
    """Each result of a leaf with elements held still says so."""
    if not held:
        return results
    k = sum(int(np.sum(m)) for m in held.values())
    why = (
        f"{k} input elements held still (the tangents are 0 there): the reference's "
        "derivative is not finite there and f ends on one side (a singular point, where "
        "the rule's convention is its own)"
    )
    return [
        dataclasses.replace(r, note=join(r.note, why)) if r.parameter in held else r
        for r in results
    ]


def _singular_inputs(f, ref, inputs, ct, most=32) -> dict[str, np.ndarray]:
    """{input leaf: mask} of the elements where the reference's derivative is not finite
    and f is not finite on one side (sqrt at 0): no tangent moves them."""
    if ref is None:
        return {}
    loss = cached(pairing_loss, ref, inputs.key())
    fl, args = inputs.floats(), (inputs.others, ct)
    hint = singular_elements(loss, fl, args)
    out, g = {}, _outputs_of(f, inputs)
    for i, n in enumerate(sorted(fl)):  # the dict's leaves, in jax.tree order
        if i not in hint:
            continue
        mask = np.zeros(np.shape(fl[n]), bool)
        x = np.asarray(fl[n], np.float64)
        step = 1e-6 * max(float(np.sqrt(np.mean(x**2))), 1e-300)
        for c in np.argwhere(hint[i])[:most]:
            c = tuple(int(j) for j in c)
            for s in (step, -step):
                moved = {**fl, n: jnp.asarray(fl[n]).at[c].add(s)}
                if not all(np.all(np.isfinite(np.asarray(y))) for y in g(moved)):
                    mask[c] = True
        if mask.any():
            out[n] = mask
    return out


# --- assertions ----------------------------------------------------------------------------


def _asserting(call, work, what, f, primals, allow_inconclusive, kwargs):
    tol = {k: kwargs.pop(k, None) for k in ("rtol", "atol", "tolerance_factor")}
    return run_check(
        call,
        subject_of(f),
        primals,
        lambda: work(f, *primals, **kwargs),
        **tol,
        assert_what=what,
        allow_inconclusive=allow_inconclusive,
    )


def assert_vjp(f, *primals, allow_inconclusive: bool = False, **kwargs) -> list[CheckResult]:
    """`check_vjp`, raising an AssertionError that names each failed input leaf or contract,
    the oracle, the worst element (or direction) and both values; and each input leaf or
    contract check nothing judged (unless `allow_inconclusive`)."""
    return _asserting("assert_vjp", vjp_results, "VJP rule", f, primals, allow_inconclusive, kwargs)


def assert_jvp(f, *primals, allow_inconclusive: bool = False, **kwargs) -> list[CheckResult]:
    """`check_jvp`, raising as `assert_vjp` does."""
    return _asserting("assert_jvp", jvp_results, "JVP rule", f, primals, allow_inconclusive, kwargs)
