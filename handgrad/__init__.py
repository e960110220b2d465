"""handgrad: hand-derived gradients as pure jax.numpy, with no autodiff inside.

One module per derivation (`handgrad.softmax_ce`, `handgrad.mlp`, ...): its pieces, its public
functions and its steps (`CHAINS`). Letters: N batch, D input features, H hidden units,
C classes.
"""

from handgrad.attn import (
    attention,
    attention_backward,
    flash_attention,
    flash_attention_backward,
    softmax_backward,
)
from handgrad.linear_ce import linear_cross_entropy
from handgrad.mlp import Params, init_params, mlp_forward, mlp_grads, mlp_loss
from handgrad.sigmoid_bce import binary_cross_entropy, binary_cross_entropy_grad, sigmoid
from handgrad.softmax_ce import (
    cross_entropy,
    cross_entropy_grad,
    softmax,
    softmax_cross_entropy,
    softmax_jacobian,
)

__version__ = "0.3.0"

__all__ = [
    "Params",
    "attention",
    "attention_backward",
    "binary_cross_entropy",
    "binary_cross_entropy_grad",
    "cross_entropy",
    "cross_entropy_grad",
    "flash_attention",
    "flash_attention_backward",
    "init_params",
    "linear_cross_entropy",
    "mlp_forward",
    "mlp_grads",
    "mlp_loss",
    "sigmoid",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
    "softmax_jacobian",
]
