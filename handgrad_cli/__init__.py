"""The `handgrad` command: a layer above `handgrad` (the derivations) and `jax_ref` (the
referee). Neither package imports this one."""

from handgrad_cli.main import main, run

__all__ = ["main", "run"]
