"""Test setup: float64 on, hypothesis profiles.

Profiles: `default` (quick, for the edit-test loop) and `ci` (thorough), chosen by
HYPOTHESIS_PROFILE, else `ci` when the CI variable is set. deadline=None everywhere:
the first example of each shape pays jit compilation, which is not a bug.
"""

import os

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("default", max_examples=15, **_common)
settings.register_profile("ci", max_examples=100, **_common)
_profile = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
settings.load_profile(_profile)
