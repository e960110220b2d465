"""`handgrad audit`: JAX's own derivative rules (`jax.vjp`, `jax.jvp`, first and second
order) against central differences of each function's forward pass, at ordinary points and
at the points where rules go wrong; every finding triaged (bug, convention, checker).

    from jax_ref.audit import discover, audit_function
    found = discover(["jax.numpy"])             # every public callable, or why it is skipped
    findings = audit_function(found[0], ...)    # its rules at its points

There is no autodiff reference: autodiff is what is under test. The judge is
`jax_ref.finite_difference.along` (element by element, kinks and non-finite values set
aside), in float64; float32 rules are judged against the same float64 differences.
"""

from jax_ref.audit.discover import DEFAULT_MODULES, Candidate, discover
from jax_ref.audit.run import Finding, audit_function

__all__ = ["DEFAULT_MODULES", "Candidate", "Finding", "audit_function", "discover"]
