"""The finite-difference engine at one point: a screen of all leaves along shared
directions, then each leaf the screen does not settle localised alone."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.finite_difference import stencil
from jax_ref.finite_difference.probe import BIG, Probe
from jax_ref.finite_difference.stencil import NOISE, STENCIL, Directional, directional
from jax_ref.runtime import highest_precision
from jax_ref.tolerances import absolute_allowance, tolerance
from jax_ref.trees import is_float, leaf_name, rms
from jax_ref.verdict import CheckResult, inconclusive_check, powerless

__all__ = ["Engine", "Leaf", "build_engine"]

SCREEN_FROM = 8  # leaves: fewer are probed one by one
ORACLE = "finite_difference"


def _rademacher(rng, shape) -> np.ndarray:
    """Random signs ±1 as int8, from random bytes (8 signs a byte)."""
    n = int(np.prod(shape, dtype=np.int64))
    bits = np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), np.uint8), count=n)
    return (bits.astype(np.int8) * 2 - 1).reshape(shape)


class Leaf:
    """One float leaf under test: its value, the hand gradient, its scale s and budget."""

    def __init__(self, name, x, g, rms_x, scale, fallback_scale):
        self.name, self.x = name, x
        self.g = np.asarray(g, np.float64)
        self.flat_g = self.g.ravel()
        self.shape, self.n = np.shape(x), int(np.size(x))
        self.gdtype = jnp.result_type(g)
        self.s = rms_x if rms_x > 0 else fallback_scale  # the leaf's own scale
        gnorm = math.sqrt(float(np.dot(self.flat_g, self.flat_g)))  # one pass
        finite = math.isfinite(gnorm) or bool(np.all(np.isfinite(self.g)))
        if finite and not math.isfinite(gnorm):  # finite entries whose squares overflow
            gnorm = float(np.linalg.norm(self.g))
        self.gmax = float(np.max(np.abs(self.g), initial=0.0)) if finite else math.inf
        self.gnorm = gnorm if finite else math.inf
        self.natural = float(scale)
        # rounding the gradient's dtype permits, per element, and what it can add up to
        # along a sign direction: Σ δ_i r_i with random signs exceeds 4 ‖δ‖ with
        # probability < 7e-4 (Hoeffding)
        rho = tolerance(self.gdtype) * max(self.gmax if finite else 0.0, self.natural)
        rho += absolute_allowance()  # atol, where the caller set one
        self.budget = 4 * math.sqrt(self.n) * rho * self.s
        self.gscale = max(self.gmax if finite else 0.0, self.natural)
        # The first step: a big leaf usually feeds many units, and a step of H crosses
        # some unit's kink (a ReLU layer of 65,536 pre-activations crosses about five per
        # direction), which costs a closer round and power; the loss runs in float64, so
        # 16x closer costs little in noise (measured on the 814k MLP: docs/oracles.md).
        # A kink inside the stencil is looked at `closer` times closer.
        self.h0, self.closer = (stencil.H, 64) if self.n <= BIG else (stencil.H / 16, 16)
        self.held = np.zeros(self.n, bool)  # elements held still: singular points


def build_engine(
    loss_fn, params, grads, args, scales, directions, seed, what="loss_fn", still=None
) -> Engine:
    """The finite-difference machinery at this point, in float64 (inside enable_x64), or
    in the loss's own precision where it runs in no other (`Engine.why` says so)."""
    (p64, *a64), precision, why = highest_precision(
        lambda p, *a: loss_fn(p, *a), (params, *args), what
    )
    a64 = tuple(a64)
    flat, treedef = jax.tree.flatten_with_path(p64)
    values = [np.asarray(x) for _, x in flat]
    grad_leaves = jax.tree.leaves(grads)
    leaf_scales = [0.0] * len(values) if scales is None else jax.tree.leaves(scales)
    idx = [i for i, x in enumerate(values) if is_float(x) and np.size(x) > 0]
    # each leaf's own scale, over its finite entries (an input of -inf moves by 0 there)
    scale = {i: rms(values[i][np.isfinite(values[i])]) for i in idx}
    fallback = max(scale.values(), default=0.0) or 1.0
    leaves = {
        i: Leaf(
            leaf_name(flat[i][0]), values[i], grad_leaves[i], scale[i], leaf_scales[i], fallback
        )
        for i in idx
    }
    K = max(int(directions), 2)  # a point kink whose jumps cancel must not decide alone
    steps = [leaves[i].s if i in leaves else 0.0 for i in range(len(values))]
    size = 1 + NOISE + 6 * K
    probe = Probe(loss_fn, treedef, [jnp.asarray(v) for v in values], steps, a64, size, what)
    engine = Engine(probe, leaves, len(values), K, np.random.default_rng(seed))
    engine.precision, engine.why = precision, why
    engine.dtypes = [jnp.result_type(values[i]) for i in idx]
    engine.still = {i: np.asarray(m, bool).ravel() for i, m in (still or {}).items()}
    return engine


@dataclasses.dataclass
class _Tally:
    """What one leaf's rounds saw: the judged directions, and why others were not."""

    covered: np.ndarray  # elements some judged direction moved
    diffs: list = dataclasses.field(default_factory=list)  # |hand - measured|
    alloweds: list = dataclasses.field(default_factory=list)  # the allowed error
    hands: list = dataclasses.field(default_factory=list)  # (hand, measured)
    supports: list = dataclasses.field(default_factory=list)  # elements each moved
    failed_flat: list = dataclasses.field(default_factory=list)
    tried: int = 0
    kinks: int = 0
    flat: int = 0
    at_point: int = 0
    between: int = 0
    nonfinite: int = 0
    density: float = 1.0

    def note(self, h) -> str:
        parts = [f"{len(self.diffs) - len(self.failed_flat)} directions judged of {self.tried}"]
        if self.kinks:
            parts.append(f"{self.kinks} skipped at kinks near the point")
        if self.at_point:
            parts.append(
                f"{self.at_point} on a kink at the point ({self.between} with the hand value "
                "between the one-sided slopes)"
            )
        if self.flat:
            parts.append(f"{self.flat} flat at the loss's rounding resolution")
        if self.nonfinite:
            parts.append(f"{self.nonfinite} not finite even at step {h:.1g}")
        note = ", ".join(parts)
        if self.failed_flat:
            note += (
                "; along a flat direction the hand gradient predicts a change the loss "
                "does not show"
            )
        return note


def _held(leaf) -> str:
    """The note on a leaf's elements held still, if any."""
    k = int(leaf.held.sum())
    if not k:
        return ""
    return (
        f"; {k} of {leaf.n} elements held still and not judged: the reference's derivative "
        "is not finite there and the loss ends on one side (a singular point, where the "
        "rule's convention is its own)"
    )


class Engine:
    """The screen (all leaves along shared directions) and the per-leaf localisation."""

    def __init__(self, probe, leaves, n_leaves, K, rng):
        self.probe, self.leaves, self.n_leaves, self.K, self.rng = probe, leaves, n_leaves, K, rng
        self.last = None  # the signs of the last round, per leaf, on the host
        self.last_dev = None  # the same on the device
        self._hand_cache = {}  # leaf -> the hand directional derivatives along self.last
        self.precision, self.why = "float64", ""  # what the loss was evaluated in, and why
        self.dtypes = []  # the float dtypes the leaves were differenced in
        self.still = {}  # leaf -> elements where the reference's derivative is not finite

    # --- directions ---------------------------------------------------------------------

    def _signs(self, leaf, density):
        r = _rademacher(self.rng, (self.K, *leaf.shape))
        if leaf.held.any():  # singular elements never move
            r = r * (~leaf.held).reshape(leaf.shape).astype(np.int8)
        if density >= 1.0:
            return r
        keep = self.rng.random(r.shape) < density
        flat = keep.reshape(self.K, -1)
        for k in range(self.K):
            if not flat[k].any():  # at least one element takes part
                flat[k, self.rng.integers(flat.shape[1])] = True
        return r * flat.reshape(r.shape).astype(np.int8)

    def _dirs(self, only=None, density=1.0):
        """K sign directions per leaf (int8; None for a leaf not probed). With `only`, the
        other leaves keep their last directions: the mask leaves them still, and the
        compilation stays the same. With density < 1 each element takes part with that
        probability: sparse directions can step around a kink sitting at the point."""
        signs = []
        for i in range(self.n_leaves):
            leaf = self.leaves.get(i)
            if leaf is None:
                signs.append(None)
            elif only is not None and i != only and self.last is not None:
                signs.append(self.last[i])
            else:
                signs.append(self._signs(leaf, density))
        return self._put(signs)

    def _put(self, signs):
        """Sends the signs that changed to the device; returns the device list."""
        old, old_dev = self.last or [None] * self.n_leaves, self.last_dev or [None] * self.n_leaves
        dev = [
            None if r is None else (d if r is o else jnp.asarray(r))
            for r, o, d in zip(signs, old, old_dev)
        ]
        self.last, self.last_dev = signs, dev
        self._hand_cache = {}
        return dev

    def _mask(self, only=None):
        return np.array(
            [
                1.0 if (i in self.leaves and (only is None or i == only)) else 0.0
                for i in range(self.n_leaves)
            ]
        )

    def _hand(self, k, only=None):
        """What the hand gradient predicts along direction k, and its rounding budget."""
        total, budget2 = 0.0, 0.0
        for i, leaf in self.leaves.items():
            if only is not None and i != only:
                continue
            if i not in self._hand_cache:  # all K at once: one pass over the leaf
                signs = self.last[i].reshape(self.K, -1).astype(np.float64)
                self._hand_cache[i] = leaf.s * (signs @ leaf.flat_g)
            total += float(self._hand_cache[i][k])
            budget2 += leaf.budget**2
        return total, math.sqrt(budget2)

    def _round(self, dirs, h, mask, ks) -> list[Directional]:
        """Stencils along directions ks (the noise grid on the first), at step h."""
        pts = [(0.0, ks[0], mask)] + [(j * h / 4096, ks[0], mask) for j in range(1, NOISE + 1)]
        for k in ks:
            pts += [(s * h, k, mask) for s in STENCIL] + [(-s * h, k, mask) for s in STENCIL]
        vals = self.probe(dirs, pts)
        f0 = vals[0]
        sigma = stencil.noise_level(vals[: 1 + NOISE]) if all(map(math.isfinite, vals[:6])) else 0
        out = []
        for j, _ in enumerate(ks):
            base = 1 + NOISE + 6 * j
            fp, fm = vals[base : base + 3], vals[base + 3 : base + 6]
            out.append(directional(f0, fp, fm, h, self.probe.eps, sigma))
        return out

    def _closer_at_kinks(self, rows, dirs, h, mask, factor):
        """Rows with a kink in [-h, h] measured again `factor` times closer."""
        redo = [k for k, r in enumerate(rows) if r.verdict in ("kink", "kink at 0")]
        if redo:
            for k, r in zip(redo, self._round(dirs, h / factor, mask, redo)):
                rows[k] = r
        return rows

    # --- the screen ---------------------------------------------------------------------

    def screen(self) -> dict[int, CheckResult]:
        """All leaves at once along K shared directions; returns the leaves it settles.
        Worth it only with many leaves: a few are cheaper probed one by one, and a ReLU
        network's big leaf forces the shared step down anyway."""
        if len(self.leaves) < SCREEN_FROM:
            return {}
        dirs, mask, h = self._dirs(), self._mask(), stencil.H
        for _ in range(4):
            rows = self._round(dirs, h, mask, list(range(self.K)))
            if all(r.verdict != "non-finite" for r in rows):
                break
            h /= 16
        rows = self._closer_at_kinks(rows, dirs, h, mask, 64)
        if any(r.verdict not in ("smooth", "constant") for r in rows):
            return {}
        t = _Tally(covered=np.zeros(0, bool))
        for k, r in enumerate(rows):
            hand, budget_k = self._hand(k)
            t.diffs.append(abs(hand - r.est))
            t.alloweds.append(r.bound + budget_k)
            t.hands.append((hand, r.est))
            if not t.diffs[-1] <= t.alloweds[-1]:
                return {}  # something disagrees: localise it leaf by leaf
        out = {}
        for i, leaf in self.leaves.items():
            # an error δ in one element moves every direction's hand value by s |δ|
            det = (
                min(a + d for a, d in zip(t.alloweds, t.diffs)) / (leaf.s * leaf.gscale)
                if leaf.gscale > 0
                else math.inf
            )
            if det > max(1e-6, 10 * leaf.budget / max(leaf.s * leaf.gscale, 1e-300)):
                continue  # swamped by the other leaves here: probe it alone
            note = f"{self.K} directions shared by all leaves"
            out[i] = self._result(leaf, "passed", t, det, note)
        return out

    def _result(self, leaf, status, t: _Tally, det, note) -> CheckResult:
        """A judged leaf: its worst direction (error over allowance) and the power."""
        # relative to the hand directional derivatives, or to the measured ones where the
        # hand gradient is zero (a dropped cotangent): never to 1e-300
        measured = max((abs(h[1]) for h in t.hands if math.isfinite(h[1])), default=0.0)
        scale = max(leaf.s * leaf.gnorm, measured, 1e-300) if math.isfinite(leaf.gnorm) else 1.0
        w = int(np.argmax(np.array(t.diffs) / np.maximum(np.array(t.alloweds), 1e-300)))
        return CheckResult(
            parameter=leaf.name,
            oracle=ORACLE,
            status=status,
            note=note,
            dtype=jnp.dtype(leaf.gdtype).name,
            shape=leaf.shape,
            max_abs_err=float(max(t.diffs)),
            max_rel_err=float(t.diffs[w] / scale),
            tolerance=float(t.alloweds[w] / scale),
            worst_index=(w,),
            got=t.hands[w][0],
            want=t.hands[w][1],
            detectable_rel_err=det,
            index_kind="direction",
        )

    # --- one leaf alone -----------------------------------------------------------------

    def _hold_singular(self, i) -> None:
        """Hold still the elements of leaf i where the reference's derivative is not finite
        (the hint) and the loss is not finite on a side (its domain ends there: sqrt at
        0). Elsewhere (a norm at 0, finite on both sides) differences still judge."""
        leaf, hint = self.leaves[i], self.still.get(i)
        if hint is None or not hint.any():
            return
        idx = np.flatnonzero(hint)[:256]
        rows = self.coordinates(i, [int(c) for c in idx])
        leaf.held[idx[[r.verdict == "non-finite" for r in rows]]] = True

    def localise(self, i, max_tries) -> CheckResult:
        """Leaf i alone: K directions at a time, a kinked one looked at closer, then
        replaced, until K judge it or max_tries are spent."""
        leaf, mask = self.leaves[i], self._mask(only=i)
        at_point = self._loss_at_point(mask)
        if not math.isfinite(at_point):
            return self._unjudged(leaf, f"the loss is not finite at the point ({at_point})")
        self._hold_singular(i)
        if leaf.held.all():
            return self._unjudged(leaf, "every element sits on a singular point" + _held(leaf))
        bad = int(np.count_nonzero(~np.isfinite(leaf.flat_g) & ~leaf.held))
        if bad:
            return CheckResult(
                parameter=leaf.name,
                oracle=ORACLE,
                status="failed",
                note=f"the hand gradient is not finite at {bad} of {leaf.n} elements, where "
                "the loss is finite",
                dtype=jnp.dtype(leaf.gdtype).name,
                shape=leaf.shape,
                max_rel_err=math.inf,
                index_kind="direction",
            )
        t, h = _Tally(covered=np.zeros(leaf.n, bool)), leaf.h0
        while len(t.diffs) < self.K and t.tried < max_tries:
            dirs = self._dirs(only=i, density=t.density)
            t.tried += self.K
            rows, h = self._leaf_round(leaf, dirs, h, mask)
            self._count(i, rows, t)
            if any(r.verdict == "kink at 0" for r in rows) and len(t.diffs) < self.K:
                # every direction so far crosses a kink sitting at the point: try sparser
                # ones, which may step around the kinked elements
                t.density = max(t.density / 4, 1.0 / max(leaf.n, 1))
        return self._conclude(i, t, t.note(h) + _held(leaf))

    def _loss_at_point(self, mask) -> float:
        dirs = self.last_dev if self.last_dev is not None else self._dirs()
        return self.probe(dirs, [(0.0, 0, mask)])[0]

    def _leaf_round(self, leaf, dirs, h, mask):
        """One round along K directions: the step shrunk where the loss is not finite,
        grown where it is below the loss's rounding, closer at kinks. (rows, step)."""
        ks = list(range(self.K))
        rows = self._round(dirs, h, mask, ks)
        shrink = 0
        while any(r.verdict == "non-finite" for r in rows) and shrink < 5:
            h, shrink = h / 16, shrink + 1
            rows = self._round(dirs, h, mask, ks)
        coarse = self.probe.eps > 1e-15  # computed in float32 (or narrower) inside
        H, H_MAX = stencil.H, stencil.H_MAX
        while not shrink and h < H_MAX and any(r.too_fine(h < H or coarse) for r in rows):
            # the step is below what the loss's rounding resolves (a loss computed in
            # float32 inside): a bigger one, up to H_MAX (a big leaf's 16x finer first
            # step goes back to H first)
            h = min(h * 16, H_MAX)
            rows = self._round(dirs, h, mask, ks)
        return self._closer_at_kinks(rows, dirs, h, mask, leaf.closer), h

    def _count(self, i, rows, t: _Tally) -> None:
        """Each direction of a round judged, or counted with the reason it was not."""
        for k, r in enumerate(rows):
            hand, budget_k = self._hand(k, only=i)
            if r.verdict == "non-finite":
                t.nonfinite += 1
            elif r.verdict == "kink":
                t.kinks += 1
            elif r.verdict == "kink at 0":
                t.at_point += 1
                lo, hi = min(r.left, r.right), max(r.left, r.right)
                t.between += lo - r.bound - budget_k <= hand <= hi + r.bound + budget_k
            elif r.verdict in ("flat", "constant") and abs(hand - r.est) <= r.bound + budget_k:
                t.flat += 1  # agrees, but the loss shows no slope to agree with
            else:  # smooth; or flat and the hand gradient predicts a change it does not show
                if r.verdict in ("flat", "constant"):
                    t.failed_flat.append(k)
                t.diffs.append(abs(hand - r.est))
                t.alloweds.append(r.bound + budget_k)
                t.hands.append((hand, r.est))
                support = self.last[i][k].ravel() != 0
                t.supports.append(support)
                t.covered |= support

    def _conclude(self, i, t: _Tally, note) -> CheckResult:
        """The leaf's verdict from its tally."""
        leaf = self.leaves[i]
        if not t.diffs:
            why = (
                "the point is on a kink: differences cannot confirm which one-sided "
                "slope (or value between) the gradient's convention takes"
                if t.at_point
                else "no usable direction"
            )
            return self._unjudged(leaf, f"{why}: {note}")
        ok = all(d <= a for d, a in zip(t.diffs, t.alloweds))
        bad = [s for d, a, s in zip(t.diffs, t.alloweds, t.supports) if d > a]
        if not ok and not any(self._smooth_elements(i, s) for s in bad):
            # At a point where the loss is not differentiable, a direction along which
            # slope jumps of opposite sign cancel looks smooth, yet its slope is not the
            # convention's: a disagreement there says nothing about the gradient.
            return self._unjudged(
                leaf,
                "finite differences disagree, but the loss is not smooth at the point "
                "along every element the disagreeing directions move (a kink, or flat at "
                "its resolution): through a kink whose slope jumps cancel, the slope is "
                f"not the gradient's convention, so the disagreement proves nothing: {note}",
                max_abs_err=float(max(t.diffs)),
            )
        # an error δ in one element moves every direction's hand value by s |δ|: flagged
        # once s |δ| exceeds the allowance plus what is already there (a failure: its
        # allowance alone is the resolution)
        res = [a + (d if ok else 0.0) for a, d in zip(t.alloweds, t.diffs)]
        det = min(res) / (leaf.s * leaf.gscale) if leaf.gscale > 0 else math.inf
        slope = max(leaf.s * leaf.gnorm, max(abs(m) for _, m in t.hands))
        if ok and 0 < slope <= min(t.alloweds):
            # every direction allows an error as large as the slope itself: even a dropped
            # gradient would agree. Nothing was judged. (A zero gradient against a
            # measured zero slope is judged: to the allowance, in absolute terms.)
            note = (
                "the differences' error bound (the loss's rounding noise at the largest step) "
                f"is as large as the slope itself, so even a zero gradient would agree: {note}"
            )
            return self._result(leaf, "inconclusive", t, math.inf, note)
        rest = np.flatnonzero(~(t.covered | leaf.held))
        if ok and rest.size and rest.size <= 64:
            # sparse directions saw only some elements: look at the others one by one
            verdict, why = self._one_sided(i, rest)
            if verdict == "failed":
                return self._result(leaf, "failed", t, det, f"{why}: {note}")
            if verdict == "passed":
                return powerless(self._result(leaf, "passed", t, det, f"{note}; {why}"))
        if ok and rest.size:
            # the rest sit on a kink at the point, where an error (or a convention) goes
            # unseen. Agreement there is no pass.
            note = (
                f"the point is on a kink: sparse directions stepping around it agree on "
                f"{t.covered.sum()} of {leaf.n} elements, the others cannot be judged: {note}"
            )
            return self._result(leaf, "inconclusive", t, math.inf, note)
        return powerless(self._result(leaf, "passed" if ok else "failed", t, det, note))

    def _one_sided(self, i, elements) -> tuple[str, str]:
        """Elements of leaf i no judged direction moved, each alone: smooth there, the hand
        value must match; on a kink at the point, it must lie between the one-sided slopes
        (a convention: |x| or relu at 0); else it is not judged. (verdict, why):
        "failed", "passed" (every element judged or within its slopes), or "unjudged"."""
        leaf = self.leaves[i]
        rho = tolerance(leaf.gdtype) * max(leaf.gmax, leaf.natural) + absolute_allowance()
        allow = 4 * rho * leaf.s
        between = 0
        for c, d in zip(elements, self.coordinates(i, [int(c) for c in elements])):
            hand = leaf.s * leaf.flat_g[c]
            if d.verdict in ("smooth", "constant", "flat"):
                if not abs(hand - d.est) <= d.bound + allow:
                    where = list(np.unravel_index(c, leaf.shape))
                    return "failed", (
                        f"alone, element {where} is smooth and its slope "
                        f"{d.est / leaf.s:.6g} is not the hand value {leaf.flat_g[c]:.6g}"
                    )
            elif d.verdict == "kink at 0" and (
                min(d.left, d.right) - d.bound - allow
                <= hand
                <= max(d.left, d.right) + d.bound + allow
            ):
                between += 1
            else:
                return "unjudged", ""
        return "passed", (
            f"{len(elements)} elements no judged direction moved, each judged alone ({between} "
            "on a kink at the point, the hand value between its one-sided slopes: a convention)"
        )

    def _unjudged(self, leaf, note, **measures) -> CheckResult:
        return inconclusive_check(
            leaf.name,
            ORACLE,
            note,
            dtype=jnp.dtype(leaf.gdtype).name,
            shape=leaf.shape,
            index_kind="direction",
            **measures,
        )

    def _smooth_elements(self, i, support, most=24) -> bool:
        """Is the loss smooth at the point along each element a direction moved (all of a
        small support, a random `most` of a big one)? A failure is confirmed only then."""
        idx = np.flatnonzero(support)
        coords = idx if idx.size <= most else self.rng.choice(idx, most, False)
        rows = self.coordinates(i, [int(c) for c in coords])
        return all(d.verdict in ("smooth", "constant") for d in rows)

    def coordinates(self, i, coords) -> list[Directional]:
        """The loss along single elements of leaf i (to explain a disagreement)."""
        leaf, out = self.leaves[i], []
        mask = self._mask(only=i)
        for start in range(0, len(coords), self.K):
            chunk = list(coords[start : start + self.K])
            if self.last is None:
                self._dirs()
            signs = list(self.last)
            d = np.zeros((self.K, leaf.n), np.int8)
            for k, c in enumerate(chunk):
                d[k, c] = 1
            signs[i] = d.reshape(self.K, *leaf.shape)
            dirs = self._put(signs)
            rows = self._round(dirs, stencil.H, mask, list(range(len(chunk))))
            redo = [k for k, r in enumerate(rows) if r.verdict in ("kink", "non-finite")]
            if redo:
                for k, r in zip(redo, self._round(dirs, stencil.H / 64, mask, redo)):
                    rows[k] = r
            out += rows
        return out
