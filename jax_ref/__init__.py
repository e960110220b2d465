"""jax_ref: check hand-derived gradients and differentiation rules, and the referee of
the derivations handgrad ships.

The checker (`check_gradients`, `check_vjp`, `check_jvp`, their `assert_*`, the verdict
policy) loads on `import jax_ref`; the referee (`REGISTRY`, the spec functions such as
`mlp_loss`) loads on first use, and with it `handgrad`. `jax_ref.strategies` (hypothesis
strategies) needs the `dev` extra and is imported on its own. docs/architecture.md.
"""

import importlib

from jax_ref.declared import GradientCheck, RuleCheck
from jax_ref.gradients import assert_gradients, check_gradients
from jax_ref.rules import assert_jvp, assert_vjp, check_jvp, check_vjp
from jax_ref.tolerances import TOLERANCES, tolerance
from jax_ref.verdict import CheckResult, Verdict, verdict

# the referee's names, loaded when first asked for (PEP 562): {name: module}
_REFEREE = {
    "REGISTRY": "jax_ref.derivations",
    "cross_entropy": "jax_ref.derivations.softmax_ce",
    "cross_entropy_grad": "jax_ref.derivations.softmax_ce",
    "softmax": "jax_ref.derivations.softmax_ce",
    "softmax_jacobian": "jax_ref.derivations.softmax_ce",
    "mlp_forward": "jax_ref.derivations.mlp",
    "mlp_grads": "jax_ref.derivations.mlp",
    "mlp_loss": "jax_ref.derivations.mlp",
}


def __getattr__(name):
    if name in _REFEREE:
        value = getattr(importlib.import_module(_REFEREE[name]), name)
        globals()[name] = value  # once loaded, an ordinary attribute
        return value
    raise AttributeError(f"module 'jax_ref' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_REFEREE))


__all__ = [
    "REGISTRY",
    "TOLERANCES",
    "CheckResult",
    "GradientCheck",
    "RuleCheck",
    "Verdict",
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
    "verdict",
]
