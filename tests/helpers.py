"""Shared bits of the tests: each derivation's shipped implementation and cases."""

from jax_ref.derivations import REGISTRY
from jax_ref.spec import implementation

SOFTMAX_CE, MLP = REGISTRY["softmax_ce"], REGISTRY["mlp"]
HAND = {name: implementation(d) for name, d in REGISTRY.items()}
