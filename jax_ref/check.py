"""The gradient checks' former module, kept so that old imports work: use `jax_ref`
(`jax_ref.check_gradients`, `jax_ref.CheckResult`) or `jax_ref.gradients`."""

from jax_ref.gradients import GRADIENT_ORACLES as ORACLES
from jax_ref.gradients import assert_gradients, check_gradients
from jax_ref.runtime import enable_x64
from jax_ref.verdict import STATUSES, CheckResult, compare

__all__ = [
    "ORACLES",
    "STATUSES",
    "CheckResult",
    "assert_gradients",
    "check_gradients",
    "compare",
    "enable_x64",
]
