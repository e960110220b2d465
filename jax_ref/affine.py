"""The loss along a line through one big leaf, evaluated cheaply: φ(t) = L(x + t·d_k).

`line_values` walks the loss's jaxpr from the leaf: what is polynomial in t (degree ≤ 2:
a first layer's X·W, a |W|² penalty) is computed once, every other operation runs point
by point on the polynomials' values. Exact algebra, not differentiation: the same
function of t, evaluated in another order (docs/oracles.md, "The line walk").
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
from jax.extend.core import Literal

_DEGREE = 2


class _Poly:
    """c[0] + t·c[1][k] + t²·c[2][k]: c[0] the value at the point, c[d] (K, *shape) for
    d >= 1, None where that degree is absent."""

    __slots__ = ("c",)

    def __init__(self, c):
        self.c = list(c) + [None] * (_DEGREE + 1 - len(c))

    def at(self, t, k):
        out = self.c[0]
        for d in range(1, _DEGREE + 1):
            if self.c[d] is not None:
                out = out + t**d * self.c[d][k]
        return out


def _all(ins, params):
    return set(range(len(ins)))


def _first_if_rest_constant(ins, params):
    return {0} if not any(isinstance(x, _Poly) for x in ins[1:]) else None


def _widening(ins, params):
    new = jnp.dtype(params["new_dtype"])
    old = jnp.result_type(ins[0].c[0] if isinstance(ins[0], _Poly) else ins[0])
    ok = jnp.issubdtype(new, jnp.floating) and jnp.issubdtype(old, jnp.floating)
    return {0} if ok and new.itemsize >= jnp.dtype(old).itemsize else None


def _slots(*positions):
    def rule(ins, params):
        if any(isinstance(x, _Poly) for j, x in enumerate(ins) if j not in positions):
            return None
        return set(positions) & set(range(len(ins)))

    return rule


# primitive name -> the operands it is jointly linear in (given the inputs), or None when
# it is not linear in the polynomial ones. Its other operands are parameters (indices, a
# predicate) and must be constant. Constants in linear operands are summands: no slope.
_LINEAR = {
    **{
        name: _all
        for name in (
            "add",
            "add_any",
            "sub",
            "neg",
            "reduce_sum",
            "reshape",
            "transpose",
            "broadcast_in_dim",
            "squeeze",
            "expand_dims",
            "slice",
            "concatenate",
            "rev",
            "copy",
            "copy_p",
            "cumsum",
        )
    },
    "div": _first_if_rest_constant,
    "dynamic_slice": _first_if_rest_constant,
    "gather": _first_if_rest_constant,
    "convert_element_type": _widening,  # exact when it widens
    "pad": _slots(0, 1),  # operand and padding value
    "dynamic_update_slice": _slots(0, 1),  # operand and update; indices constant
    # the predicate is boolean (a comparison, always point-wise), the cases linear
    "select_n": lambda ins, params: None if isinstance(ins[0], _Poly) else set(range(1, len(ins))),
    "scatter-add": _slots(0, 2),  # operand and updates; indices constant
}
# linear in each of two operands: a product of degrees d1 + d2 <= _DEGREE
_BILINEAR = ("mul", "dot_general", "conv_general_dilated")
_INLINE = ("jit", "pjit", "closed_call")


def _bind(eqn, invals):
    with eqn.ctx.manager:
        out = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
    return out if eqn.primitive.multiple_results else [out]


def _flatten(jaxpr, consts):
    """The equations of a closed jaxpr with nested jit / closed_call calls inlined:
    [(eqn, in_refs, out_refs)], refs being hashable keys or ("lit", value) pairs."""
    counter = itertools.count()
    env_consts = {}
    flat = []

    def ref_of(v, sub):
        if isinstance(v, Literal):
            return ("lit", v.val)
        return sub[v]

    def walk(jx, cvals, in_refs):
        sub = {}
        for v, c in zip(jx.constvars, cvals):
            key = ("const", next(counter))
            env_consts[key] = c
            sub[v] = key
        for v, r in zip(jx.invars, in_refs):
            sub[v] = r
        for eqn in jx.eqns:
            ins = [ref_of(v, sub) for v in eqn.invars]
            if eqn.primitive.name in _INLINE:
                inner = eqn.params["jaxpr"] if "jaxpr" in eqn.params else eqn.params["call_jaxpr"]
                inner_jaxpr = getattr(inner, "jaxpr", inner)
                inner_consts = getattr(inner, "consts", [])
                outs = walk(inner_jaxpr, inner_consts, ins)
                for v, r in zip(eqn.outvars, outs):
                    sub[v] = r
                continue
            outs = [("var", next(counter)) for _ in eqn.outvars]
            for v, r in zip(eqn.outvars, outs):
                sub[v] = r
            flat.append((eqn, ins, outs))
        return [ref_of(v, sub) for v in jx.outvars]

    out_refs = walk(jaxpr, consts, [("in", 0)])
    return flat, out_refs, env_consts


def line_values(fun, x, B, ts, ks):
    """fun(x + ts[m]·B[ks[m]]) for every point m, evaluated as described above.

    fun: a function of the one array x returning a scalar (traced here); B: (K, *x.shape)
    directions, already scaled; ts, ks: the points. Call it inside jax.jit."""
    closed = jax.make_jaxpr(fun)(x)
    flat, out_refs, env = _flatten(closed.jaxpr, closed.consts)
    env[("in", 0)] = _Poly([x, B])
    K = B.shape[0]

    def read(r):
        return r[1] if r[0] == "lit" else env[r]

    deferred, pointwise = [], set()
    for eqn, ins, outs in flat:
        res = None
        if not any(r in pointwise for r in ins if r[0] != "lit"):
            res = _evaluate(eqn, [read(r) for r in ins], K)
        if res is None:  # runs point by point
            deferred.append((eqn, ins, outs))
            pointwise.update(outs)
        else:
            env.update(zip(outs, res))

    def one(point):
        t, k = point
        local = {}

        def get(r):
            if r[0] == "lit":
                return r[1]
            if r not in local:
                v = env[r]
                local[r] = v.at(t, k) if isinstance(v, _Poly) else v
            return local[r]

        for eqn, ins, outs in deferred:
            local.update(zip(outs, _bind(eqn, [get(q) for q in ins])))
        return get(out_refs[0])

    return jax.lax.map(one, (ts, ks))


def _evaluate(eqn, vals, K):
    """The outputs of one equation: plain values when no input is a polynomial,
    polynomials when the operation allows, None when it must run point by point."""
    if not any(isinstance(v, _Poly) for v in vals):
        return _bind(eqn, vals)
    if any(
        not jnp.issubdtype(jnp.result_type(v.c[0]), jnp.floating)
        for v in vals
        if isinstance(v, _Poly)
    ):
        return None
    name = eqn.primitive.name
    if name in _BILINEAR and len(vals) == 2:
        same = vals[0] is vals[1] and (name == "mul" or _symmetric_dot(eqn.params, vals[0]))
        return _product(lambda a, b: _bind(eqn, [a, b]), vals, K, same)
    if (name == "integer_pow" and eqn.params.get("y") == 2) or name == "square":
        return _product(lambda a, b: [a * b], [vals[0], vals[0]], K, True)
    rule = _LINEAR.get(name)
    slots = None if rule is None else rule(vals, eqn.params)
    return None if slots is None else _linear(eqn, vals, slots, K)


def _per_direction(op, ins, per_k, K):
    """op applied direction by direction (ins[j][k] where per_k[j]), outputs stacked.
    A Python loop, not vmap: vmap turns X·B_k into one contraction with the directions as
    a batch dimension, which XLA's CPU backend lays out badly (3x slower measured on the
    784x1024 first layer); K is small."""
    outs = [op(*[x[k] if b else x for x, b in zip(ins, per_k)]) for k in range(K)]
    return [jnp.stack(parts) for parts in zip(*outs)]


def _symmetric_dot(params, x) -> bool:
    """dot_general(x, x) with the same contracting and batch dimensions on both sides
    and no free dimension left (⟨x, x⟩): swapping the operands changes nothing. (With a
    free dimension, x·yᵀ and y·xᵀ are transposes, not equal.)"""
    dims = params.get("dimension_numbers")
    if dims is None:
        return False
    (lc, rc), (lb, rb) = dims
    full = len(lc) + len(lb) == jnp.ndim(x.c[0])
    return full and tuple(lc) == tuple(rc) and tuple(lb) == tuple(rb)


def _coeff(v, d):
    if isinstance(v, _Poly):
        return v.c[d]
    return v if d == 0 else None


def _product(op, vals, K, symmetric=False):
    """A bilinear op(a, b) of two polynomials (or a polynomial and a constant): the
    coefficients of the product, degree by degree; None past degree 2. `symmetric`: the
    operands are the same value and op(x, y) = op(y, x) (x·x, ⟨x, x⟩)."""
    a, b = vals
    terms = {}
    for d1 in range(_DEGREE + 1):
        for d2 in range(_DEGREE + 1):
            x, y = _coeff(a, d1), _coeff(b, d2)
            if x is None or y is None:
                continue
            if d1 + d2 > _DEGREE:
                return None
            if symmetric and d1 > d2:  # op(x, y) = op(y, x): counted twice below
                continue
            if d1 == 0 and d2 == 0:
                out = op(x, y)
            else:
                out = _per_direction(op, [x, y], [bool(d1), bool(d2)], K)
            if symmetric and d1 < d2:
                out = [2 * u for u in out]
            prev = terms.get(d1 + d2)
            terms[d1 + d2] = out if prev is None else [u + w for u, w in zip(prev, out)]
    n = len(terms[0])
    return [
        _Poly([terms[d][i] if d in terms else None for d in range(_DEGREE + 1)]) for i in range(n)
    ]


def _linear(eqn, vals, slots, K):
    """An operation linear in operands `slots`: the same operation on every coefficient
    (constants in linear operands are summands: 0 past degree 0; parameters as they are)."""
    coeffs = [_bind(eqn, [_coeff(v, 0) for v in vals])]
    for d in range(1, _DEGREE + 1):
        if all(_coeff(v, d) is None for v in vals):
            coeffs.append(None)
            continue
        ins, per_k = [], []
        for j, v in enumerate(vals):
            c = _coeff(v, d)
            if c is not None:
                ins.append(c)
            elif j in slots:  # a summand without this degree
                ins.append(jnp.zeros_like(_coeff(v, 0)))
            else:  # a parameter: indices, a predicate, the constant side
                ins.append(v)
            per_k.append(c is not None)
        coeffs.append(_per_direction(lambda *xs: _bind(eqn, list(xs)), ins, per_k, K))
    n = len(coeffs[0])
    return [_Poly([c if c is None else c[i] for c in coeffs]) for i in range(n)]
