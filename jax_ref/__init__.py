"""jax_ref: the referee. The seed's losses written independently and differentiated by JAX,
and the machinery that compares a hand-derived gradient with it."""

from jax_ref.reference import cross_entropy
from jax_ref.reference import cross_entropy_grad
from jax_ref.reference import mlp_forward
from jax_ref.reference import mlp_grads
from jax_ref.reference import mlp_loss
from jax_ref.reference import softmax
from jax_ref.reference import softmax_jacobian
from jax_ref.tolerances import TOLERANCES
from jax_ref.tolerances import tolerance

__all__ = [
    "TOLERANCES",
    "cross_entropy",
    "cross_entropy_grad",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "softmax",
    "softmax_jacobian",
    "tolerance",
]
