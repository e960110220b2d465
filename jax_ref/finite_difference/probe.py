"""The loss at stencil points: many points per jitted call, directions as int8 signs."""

from __future__ import annotations

import functools
import weakref

import jax
import jax.numpy as jnp
import numpy as np

from jax_ref.affine import line_values
from jax_ref.runtime import OwnCodeError
from jax_ref.trees import error_text

__all__ = ["BIG", "Probe", "loss_resolution"]

BIG = 1 << 16  # elements: a problem this big compiles a program per probed leaf


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _phi(loss_fn, treedef, moving, batched, line, leaves, signs, steps, ts, ks, masks, *args):
    """loss_fn at leaves + t_m · mask_ml · s_l · signs_l[k_m], for every point m, in one call.

    Small problems: one program for every probe (`moving` None: the masks say which
    leaves move), so a test suite compiles once per shape. Big problems: `moving` names
    the leaves that move (static), so XLA computes what the others alone determine once
    (X·W1 while probing W2); the points are vmapped when the moving leaves are small, and
    mapped one after another when large. With `line` the index of the one (big) leaf
    that moves, the loss along the line is evaluated by jax_ref.affine."""
    if line is not None:

        def along(x):
            moved = list(leaves)
            moved[line] = x
            return loss_fn(jax.tree.unflatten(treedef, moved), *args)

        B = (steps[line] * signs[line]).astype(leaves[line].dtype)
        return line_values(along, leaves[line], B, ts * masks[:, line], ks)

    def one(point):
        t, k, m = point
        moved = []
        for i, (x, d) in enumerate(zip(leaves, signs)):
            still = d is None or (moving is not None and not moving[i])
            # the step in x's own dtype: a loss that runs only in float32 stays there
            moved.append(x if still else x + ((t * m[i] * steps[i]) * d[k]).astype(x.dtype))
        return loss_fn(jax.tree.unflatten(treedef, moved), *args)

    if batched:
        return jax.vmap(one)((ts, ks, masks))
    return jax.lax.map(one, (ts, ks, masks))


class Probe:
    """Evaluates the loss at stencil points, `size` per call (padded: one compilation).

    The directions travel as int8 signs (−1, 0, +1) and one scale per leaf: a direction of
    a million-element leaf is 1 MB, not 8, both across to the device and read per point."""

    def __init__(self, loss_fn, treedef, leaves, steps, args, size, what="loss_fn"):
        self.loss_fn, self.treedef, self.leaves, self.args = loss_fn, treedef, leaves, args
        self.what = what  # whose function the loss is, for an error it raises
        self.steps = jnp.asarray(steps, jnp.float64)  # each leaf's scale s_l
        self.size = size
        self.big = sum(int(np.size(x)) for x in leaves) > BIG
        self.no_line = set()  # moving patterns the affine evaluation could not trace
        self.eps = loss_resolution(loss_fn, treedef, leaves, args)

    def _program(self, mask):
        """(moving, batched, line): which compiled evaluation a mask of moving leaves gets."""
        if not self.big:
            return None, True, None
        moving = tuple(bool(m) for m in mask)
        batched = sum(int(np.size(x)) for x, m in zip(self.leaves, moving) if m) <= BIG
        one_big = not batched and sum(moving) == 1 and moving not in self.no_line
        return moving, batched, moving.index(True) if one_big else None

    def __call__(self, dirs, points):
        """dirs: per leaf, int8 signs (K, *shape) on the device, or None. points:
        [(t, k, mask)], mask a float vector over leaves. Returns φ values."""
        mask = points[0][2]
        moving, batched, line = self._program(mask)
        out = []
        for start in range(0, len(points), self.size):
            chunk = points[start : start + self.size]
            pad = chunk + [(0.0, 0, mask)] * (self.size - len(chunk))
            ts = np.array([p[0] for p in pad], np.float64)
            ks = np.array([p[1] for p in pad], np.int32)
            ms = np.array([p[2] for p in pad], np.float64)
            call = functools.partial(_phi, self.loss_fn, self.treedef, moving, batched)
            rest = (self.leaves, dirs, self.steps, ts, ks, ms, *self.args)
            try:
                vals = call(line, *rest)
            except Exception as e:  # the line walk's fault, or the user's loss
                if line is None:
                    raise self._theirs(e) from e
                # an operation the affine walk cannot handle: evaluate the plain way
                self.no_line.add(moving)
                line = None
                try:
                    vals = call(line, *rest)
                except Exception as e2:  # the user's loss raised: theirs to see
                    raise self._theirs(e2) from e2
            out += [float(v) for v in np.asarray(vals)[: len(chunk)]]
        return out

    def _theirs(self, e):
        where = "at finite-difference points near the given point (steps of ~1e-4 of each"
        return OwnCodeError(f"{self.what} raised {where} leaf's rms): {error_text(e)}")


# loss_fn -> {(treedef, dtypes): eps}; weak, so that a cached entry never keeps a loss (and
# the arrays its closure holds) alive
_RESOLUTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loss_resolution(loss_fn, treedef, leaves, args) -> float:
    """The unit of the loss's rounding: the machine epsilon of the narrowest float type it
    computes in (float64's, 2.2e-16, unless it casts to float32, bfloat16 or float16
    inside). A loss that runs in float32 inside is quantized at ~1e-7 of its value even
    when its inputs and output are float64: taking float64's unit would read its flatness
    at small steps as a slope of zero, and a correct gradient as wrong."""
    # keyed by dtypes, not shapes: the float types a loss computes in do not change with
    # its shapes, and a test suite calls one loss at many shapes (one trace each, else)
    key = (treedef, tuple(jnp.result_type(x) for x in [*leaves, *jax.tree.leaves(args)]))
    try:
        cached = _RESOLUTIONS.setdefault(loss_fn, {})
    except TypeError:  # not weakly referable, or unhashable: work it out each time
        cached = {}
    if key not in cached:
        try:
            closed = jax.make_jaxpr(lambda ls, a: loss_fn(jax.tree.unflatten(treedef, ls), *a))(
                list(leaves), args
            )
            eps = [float(jnp.finfo(d).eps) for d in _float_dtypes(closed.jaxpr)]
            cached[key] = max([2.2e-16, *eps])
        except Exception:  # the probe itself will raise what is wrong; here: float64
            cached[key] = 2.2e-16
    return cached[key]


def _float_dtypes(jaxpr):
    """Every float dtype a jaxpr (and the jaxprs inside it) computes in."""
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            dt = getattr(v.aval, "dtype", None)
            if dt is not None and jnp.issubdtype(dt, jnp.floating):
                yield dt
        for sub in jaxprs_in_params(eqn.params):
            yield from _float_dtypes(sub)
