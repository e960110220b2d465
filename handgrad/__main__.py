"""python -m handgrad: the same as the `handgrad` command (the command line lives in
`handgrad_cli`, a layer above both `handgrad` and `jax_ref`)."""

import sys

from handgrad_cli import run

sys.exit(run())
