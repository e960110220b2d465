"""One directional derivative from a stencil of loss values: its estimate, error bound and
shape (smooth, a kink near or at the point, flat), and the loss's rounding noise.

A direction v has, in leaf l, entries s_l · (±1): every element of the leaf moves by the
same amount, s_l = the leaf's root-mean-square (its own scale). The loss along v is
φ(t) = L(x + t v); φ'(0) = Σ_l s_l ĝ_l·r_l is what the hand gradient predicts.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["H_MAX", "NOISE", "STENCIL", "Directional", "H", "directional", "noise_level"]

H = 1e-4  # relative step: each element moves by 1e-4 of its leaf's rms
# The largest step, for a loss whose rounding hides the slope at H (one computed in
# float32 inside: noise ~6e-8 of its value). Richardson's O(h⁴) error stays small there
# for a smooth loss, and the smoothness test catches one that is not.
H_MAX = 1e-2
NOISE = 5  # extra points for the noise estimate (ECnoise differences of order 3 to 5)
STENCIL = (1.0, 0.5, 0.25)  # t = ±h·s: three central differences


def noise_level(f) -> float:
    """The loss's own rounding noise from values on a fine equispaced grid (ECnoise, Moré &
    Wild 2011): the k-th differences of noise σ have variance (2k)!/(k!)² σ². Not ε|φ|:
    a loss like lse(z) - z_y rounds at the scale of |z|, which can be 1e4 times |φ|."""
    f = np.asarray(f, np.float64)
    sigma = 0.0
    for k in range(3, len(f)):
        diff = np.diff(f, n=k)
        gamma = math.factorial(k) ** 2 / math.factorial(2 * k)
        sigma = max(sigma, math.sqrt(gamma * float(np.mean(diff**2))))
    if len(set(f.tolist())) < len(f):
        # ties: the loss is quantized at this scale; its noise is at least one quantum
        sigma = max(sigma, float(np.ptp(f)))
    return sigma


@dataclasses.dataclass
class Directional:
    """φ'(0) along one direction: estimate, error bound, and what φ looks like there."""

    est: float
    bound: float
    verdict: str  # smooth | kink | kink at 0 | flat | constant | non-finite
    left: float = math.nan  # one-sided slopes, at a kink at 0
    right: float = math.nan
    noise: float = 0.0  # the part of `bound` that rounding noise makes

    def too_fine(self, flat_is_resolution: bool) -> bool:
        """Is the step too small for the loss's rounding, so that a larger one would see
        more: noise above 1e-3 of the slope; or flat, where that flatness is the rounding's
        (below the standard step H, or a loss computed in a narrower float inside). A
        float64 loss flat at H is flat for real (a quantized loss: round(x)), and the
        flat comparison judges it."""
        if self.verdict in ("flat", "constant"):
            return flat_is_resolution
        return self.verdict == "smooth" and self.noise > 1e-3 * abs(self.est)


def _flat(f0, fp, fm, h, eps, noise1) -> Directional:
    """Points tie exactly on both sides: the loss is quantized at the step's scale (a
    saturated softmax, a piecewise-constant loss). The slope is measurable only down to
    one quantum over the step: |φ'| <= ~q / h. A loss that rounds to the same value may
    hide its scale (lse(z) - z_y is 0.0 at saturated logits while it rounds at ε|z|): the
    quantum is at least ε·max(|φ|, 1)."""
    values = [f0, *fp, *fm]
    fmax = max(abs(v) for v in values)
    quantum = max(float(np.ptp(values)), noise1, eps * max(fmax, 1.0))
    if len(set(values)) == 1:  # exactly constant along this direction
        return Directional(0.0, 2 * quantum / h, "constant")
    return Directional((fp[0] - fm[0]) / (2 * h), 2 * quantum / h, "flat")


def directional(f0, fp, fm, h, eps, sigma) -> Directional:
    """φ'(0) from φ at 0, ±h, ±h/2, ±h/4 (fp, fm in the order of STENCIL), its error
    bound, and what the values look like; `eps` is the loss's rounding unit, `sigma`
    its measured noise."""
    values = [f0, *fp, *fm]
    if not all(math.isfinite(v) for v in values):
        return Directional(math.nan, math.inf, "non-finite")
    noise1 = max(eps * max(abs(v) for v in values), sigma)  # rounding in one value
    if all(len(set(side)) < len(side) for side in ([f0, *fp], [f0, *fm])):
        # ties on one side only are a kink's (a ReLU at 0 is constant on one side): the
        # differences below tell those apart
        return _flat(f0, fp, fm, h, eps, noise1)
    D = [(p - m) / (2 * s * h) for s, p, m in zip(STENCIL, fp, fm)]
    S = [(p - 2 * f0 + m) / (s * h) for s, p, m in zip(STENCIL, fp, fm)]
    noise = 8 * noise1 / (0.25 * h)  # roundoff in one difference at the finest step
    d1, d2 = D[0] - D[1], D[1] - D[2]
    # Smooth: D(h) = φ' + k h² + O(h⁴), so d2 ≈ d1/4. A kink inside (0, h) breaks that.
    off_center = abs(d2) > 0.4 * abs(d1) + noise
    # Smooth: S(h) = h φ'' + O(h³); a kink at 0 adds its slope jump J at every h. The
    # extrapolation 2 S(h/4) - S(h/2) cancels the curvature and leaves J.
    jump = abs(2 * S[2] - S[1])
    richardson = D[2] - d2 / 3  # (4 D(h/4) - D(h/2)) / 3, error O(h⁴)
    bound = 3 * noise + abs(d2) / 3 + abs(d1 - 4 * d2) / 12
    # A jump above what noise and the smooth terms can make is a kink at 0 (its noise is at
    # most ~1.25 noise; for a smooth φ it is O(h³), below the O(h²) differences d1, d2).
    if jump > 4 * noise + 4 * (abs(d1) + abs(d2)):
        # one-sided slopes, Richardson-extrapolated: 2 F(h/4) - F(h/2)
        F = [(p - f0) / (s * h) for s, p in zip(STENCIL, fp)]
        B = [(f0 - m) / (s * h) for s, m in zip(STENCIL, fm)]
        right, left = 2 * F[2] - F[1], 2 * B[2] - B[1]
        err = 4 * noise + abs(F[2] - F[1]) + abs(B[2] - B[1])
        return Directional(richardson, err, "kink at 0", left, right)
    verdict = "kink" if off_center else "smooth"
    return Directional(richardson, bound + 2 * jump, verdict, noise=3 * noise)
