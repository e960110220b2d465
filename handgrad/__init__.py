"""handgrad: the seed's hand-derived gradients as pure jax.numpy, with no autodiff inside.

Letters: N batch, D input features, H hidden units, C classes.
"""

from handgrad.mlp import Params
from handgrad.mlp import init_params
from handgrad.mlp import mlp_forward
from handgrad.mlp import mlp_grads
from handgrad.mlp import mlp_loss
from handgrad.softmax import cross_entropy
from handgrad.softmax import cross_entropy_grad
from handgrad.softmax import softmax
from handgrad.softmax import softmax_jacobian

__version__ = "0.1.0"

__all__ = [
    "Params",
    "cross_entropy",
    "cross_entropy_grad",
    "init_params",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "softmax",
    "softmax_jacobian",
]
