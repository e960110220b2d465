"""`handgrad audit`: JAX's own derivative rules (`jax.vjp`, `jax.jvp`, first and second
order, float64 and float32) against central differences of each function's forward pass,
at ordinary points and where rules go wrong; every finding triaged (bug, convention,
checker, limitation). There is no autodiff reference: autodiff is what is under test.
The judge is `jax_ref.finite_difference.along`, in float64; float32 rules are judged
against the same float64 differences (docs in README, "Audit JAX's own rules")."""

from jax_ref.audit.discover import DEFAULT_MODULES, Candidate, discover
from jax_ref.audit.run import Finding, audit_function

__all__ = ["DEFAULT_MODULES", "Candidate", "Finding", "audit_function", "discover"]
