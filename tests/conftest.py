"""Test setup: float64 on, hypothesis profiles.

Profiles: `default` (quick, for the edit-test loop: 3 examples, no `slow` tests) and
`ci` (thorough: 100 examples, every test), chosen by HYPOTHESIS_PROFILE, else `ci` when
the CI variable is set. deadline=None everywhere:
the first example of each shape pays jit compilation, which is not a bug.
"""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

from handgrad_cli.main import cache_dir
from jax_ref.runtime import use_compilation_cache

jax.config.update("jax_enable_x64", True)


# XLA's compiled programs kept between test runs, in the cache the `handgrad` command uses
# ($HANDGRAD_CACHE_DIR, else ~/.cache/handgrad/xla; `off` turns it off): the edit-test loop
# recompiles only what changed (measured on 2 cores: ~95 s the first time, ~30 s warm).
use_compilation_cache(cache_dir())

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("default", max_examples=3, **_common)
settings.register_profile("ci", max_examples=100, **_common)
_profile = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default")
settings.load_profile(_profile)


def pytest_collection_modifyitems(config, items):
    """`slow` tests (a whole training run to a target accuracy, a 4-device subprocess, a
    50k-parameter check, the oracle corpus) run in the thorough profile (CI, or
    HYPOTHESIS_PROFILE=ci), not in the quick default one: the edit-test loop stays under
    90 s on 2 cores."""
    if _profile == "ci":
        return
    skip = pytest.mark.skip(reason="slow: runs with CI=1 or HYPOTHESIS_PROFILE=ci")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
