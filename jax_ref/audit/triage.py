"""The committed triage: findings the evidence alone does not settle, each with a reason
(and the upstream issue where there is one), and the reproduction script of a finding.

Automatic triage (jax_ref.audit.run): a disagreement confirmed at three steps is a `bug`;
one the differences do not confirm is a `checker` false alarm; a kink at the point where
the rule lies between the one-sided slopes is a `convention`. The entries below override
that where a person has looked: matched by function, point kind and mode (None: any)."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["TRIAGE", "reproduction", "triage"]

# (function, point kind or None, mode or None, category, reason, upstream)
TRIAGE = [
    (
        "jax.numpy.linalg.eigh",
        "repeated eigenvalues",
        None,
        "convention",
        "eigenvectors of a repeated eigenvalue are not unique, so they are not differentiable"
        " there; JAX's rule divides by the eigenvalue gap (NaN/inf), as documented",
        "https://github.com/jax-ml/jax/issues/4646",
    ),
    (
        "jax.scipy.linalg.eigh",
        "repeated eigenvalues",
        None,
        "convention",
        "as jax.numpy.linalg.eigh: eigenvectors of a repeated eigenvalue are not unique",
        "https://github.com/jax-ml/jax/issues/4646",
    ),
    (
        "jax.lax.linalg.eigh",
        "repeated eigenvalues",
        None,
        "convention",
        "as jax.numpy.linalg.eigh: eigenvectors of a repeated eigenvalue are not unique",
        "https://github.com/jax-ml/jax/issues/4646",
    ),
]


TRIAGE.append(
    (
        "jax.lax.clamp",
        None,
        None,
        "convention",
        "lax.clamp(min, x, max) where min > max (drawn independently, the operands are"
        " unordered: clamp is meant for min <= max, and its rule then picks the operand by"
        " comparing x with min first) or where min = x = max (a kink)",
        "",
    )
)


TRIAGE.append(
    (
        "jax.scipy.special.hyp2f1",
        "special values in the last",
        None,
        "convention",
        "z at 1 and beyond (the special values in z include 1, 1.5, 2 and 30): 1 is the branch"
        " point of 2F1, where it diverges when c - a - b < 0, and z > 1 its branch cut, where"
        " it is complex; JAX's real forward pass there is not the function, nor its rule the"
        " derivative (mpmath: no real value on both sides)",
        "",
    )
)


# patterns: (substring of the function's last name, point kinds, category, reason, upstream)
PATTERNS = [
    (
        ("eig", "svd", "qr", "schur", "polar", "rsf2csf"),
        ("identity", "repeated eigenvalues"),
        "convention",
        "a decomposition with repeated eigenvalues or singular values (the identity): the"
        " factors are not unique and the sorted spectrum has a kink there, so the function"
        " is not differentiable at that point; the rule's value is one choice",
        "https://github.com/jax-ml/jax/issues/4646",
    ),
    (
        ("pmf",),
        None,
        "convention",
        "a discrete distribution's pmf: its first argument k is integer-valued, and the"
        " audit moved it as a float (no derivative is defined in k)",
        "",
    ),
]


# bugs already reported upstream: (function, point kind or None, the issue)
UPSTREAM = [
    ("jax.scipy.special.betaln", "special values, ties", "https://github.com/jax-ml/jax/issues/34353"),
    ("jax.scipy.special.beta", "special values, ties", "https://github.com/jax-ml/jax/issues/34353"),
    ("jax.scipy.stats.beta.logpdf", "special values, ties", "https://github.com/jax-ml/jax/issues/34353"),
    ("jax.scipy.stats.beta.pdf", "special values, ties", "https://github.com/jax-ml/jax/issues/34353"),
    ("jax.scipy.stats.betabinom.logpmf", "special values, ties", "https://github.com/jax-ml/jax/issues/34353"),
    ("jax.scipy.stats.betabinom.pmf", "special values, ties", "https://github.com/jax-ml/jax/issues/34353"),
    ("jax.numpy.ldexp", None, "https://github.com/jax-ml/jax/issues/37992"),
]  # fmt: skip


def _upstream(f):
    for function, kind, url in UPSTREAM:
        if f.function == function and (kind is None or f.point.get("kind") == kind):
            return url
    return ""


def _pattern(f):
    short = f.function.rsplit(".", 1)[-1]
    for words, kinds, category, reason, upstream in PATTERNS:
        if any(w in short for w in words) and (kinds is None or f.point.get("kind") in kinds):
            return category, reason, upstream
    return None


WHERE_TRAP = (
    "NaN where the function is constant (outside its support, or on the branch a"
    " jnp.where does not take): the derivative is 0 and the rule returns the NaN of the"
    " branch not taken (the where-trap of JAX's FAQ; fixed by the double-where idiom)"
)


def _where_trap(f) -> bool:
    """A bug whose rule is NaN where the differences say the function is flat (0)."""
    rule_nan = not math.isfinite(f.rule)
    # flat: 0 within a bound that resolves it (not a bound of 1e5 around -2e4)
    small = math.isfinite(f.bound) and f.bound <= 1e-6
    flat = f.differences == 0 or (small and abs(f.differences) <= f.bound)
    return f.category == "bug" and rule_nan and flat


def triage(f):
    """The finding with the committed triage applied (its first matching entry)."""
    up = _upstream(f) if f.category == "bug" else ""
    if up:
        return dataclasses.replace(f, upstream=up)
    hit = _pattern(f) if f.category != "convention" else None
    if hit is not None:
        category, reason, upstream = hit
        return dataclasses.replace(
            f, category=category, reason=f"{reason} (triaged; found: {f.reason})", upstream=upstream
        )
    for function, kind, mode, category, reason, upstream in TRIAGE:
        if f.function != function:
            continue
        if kind is not None and f.point.get("kind") != kind:
            continue
        if mode is not None and f.mode != mode:
            continue
        return dataclasses.replace(
            f, category=category, reason=f"{reason} (triaged; found: {f.reason})", upstream=upstream
        )
    if _where_trap(f):  # after the committed entries: a pattern or a person says first
        return dataclasses.replace(f, reason=f"{WHERE_TRAP} (found: {f.reason})")
    return f


def _flag_code(label: str) -> str:
    """The keyword argument a flag label stands for, as code (where=mask: the audit's mask)."""
    p, _, v = label.partition("=")
    if v in ("mask", "weights"):
        made = "xs[0].size).reshape(xs[0].shape) % 3"
        value = f"np.arange({made} != 1" if v == "mask" else f"0.5 + np.arange({made}"
        return f"{p}=jnp.asarray({value})"
    if v in ("inf", "-inf"):
        return f"{p}={v[:-3]}np.inf"
    if v in ("True", "False") or v.replace(".", "").lstrip("-").isdigit():
        return f"{p}={v}"
    return f"{p}={v!r}"


def reproduction(f: dict) -> str:
    """A short script that shows the finding: the rule against central differences."""
    mod, _, attr = f["function"].rpartition(".")
    pt = f["point"]
    args = pt.get("at") or pt.get("args")
    lines = [
        "import jax, jax.numpy as jnp, numpy as np",
        'jax.config.update("jax_enable_x64", True)',
        f"from {mod} import {attr} as f0",
        f"xs = [jnp.asarray(a, jnp.{f['dtype']}) for a in {args!r}]",
    ]
    if "complex" in pt.get("kind", ""):  # the real parts, then the imaginary parts
        lines.append(
            "xs = [re + 1j * im for re, im in zip(xs[: len(xs) // 2], xs[len(xs) // 2 :])]"
        )
    if pt.get("with"):
        lines.append(f"f = lambda *a: f0(*a, {_flag_code(pt['with'])})")
    else:
        lines.append("f = f0")
    lines += ["us = [jnp.ones_like(x) for x in xs]", "h = 1e-6"]
    if f["order"] == 1:
        lines += [
            f"rule = jax.jvp(f, xs, us)[1]  # the {f['mode']} rule agrees with jvp at order 1",
            "step = lambda s: [x + s * u for x, u in zip(xs, us)]",
            "fd = (f(*step(h)) - f(*step(-h))) / (2 * h)",
        ]
    else:
        lines += [
            "d1 = lambda *a: jax.jvp(f, tuple(a), tuple(us))[1]",
            "rule = jax.jvp(d1, tuple(xs), tuple(us))[1]",
            "step = lambda s: [x + s * u for x, u in zip(xs, us)]",
            "fd = (d1(*step(h)) - d1(*step(-h))) / (2 * h)",
        ]
    lines.append('print("rule:", rule, "\\ncentral differences:", fd)')
    return "\n".join(lines)
