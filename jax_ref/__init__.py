"""jax_ref: the referee. The seed's losses written independently and differentiated by JAX,
and the machinery that compares a hand-derived gradient with it.

`jax_ref.strategies` (hypothesis strategies) needs the `dev` extra and is imported on its own.
"""

from jax_ref.check import CheckResult, assert_gradients, check_gradients
from jax_ref.reference import (
    cross_entropy,
    cross_entropy_grad,
    mlp_forward,
    mlp_grads,
    mlp_loss,
    softmax,
    softmax_jacobian,
)
from jax_ref.tolerances import TOLERANCES, tolerance

__all__ = [
    "TOLERANCES",
    "CheckResult",
    "assert_gradients",
    "check_gradients",
    "cross_entropy",
    "cross_entropy_grad",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "softmax",
    "softmax_jacobian",
    "tolerance",
]
