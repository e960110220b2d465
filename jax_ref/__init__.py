"""jax_ref: the referee. Each derivation's losses written independently and differentiated
by JAX (one spec module per derivation in `jax_ref.derivations`), and the machinery that
compares a hand-derived gradient with them.

`jax_ref.strategies` (hypothesis strategies) needs the `dev` extra and is imported on its own.
"""

from jax_ref.check import CheckResult, assert_gradients, check_gradients
from jax_ref.derivations import REGISTRY
from jax_ref.derivations.mlp import mlp_forward, mlp_grads, mlp_loss
from jax_ref.derivations.softmax_ce import (
    cross_entropy,
    cross_entropy_grad,
    softmax,
    softmax_jacobian,
)
from jax_ref.rules import RuleCheck, assert_jvp, assert_vjp, check_jvp, check_vjp
from jax_ref.tolerances import TOLERANCES, tolerance

__all__ = [
    "REGISTRY",
    "TOLERANCES",
    "CheckResult",
    "RuleCheck",
    "assert_gradients",
    "assert_jvp",
    "assert_vjp",
    "check_gradients",
    "check_jvp",
    "check_vjp",
    "cross_entropy",
    "cross_entropy_grad",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "softmax",
    "softmax_jacobian",
    "tolerance",
]
