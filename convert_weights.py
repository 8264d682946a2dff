#!/usr/bin/env python
"""`python convert_weights.py` = `dmax-convert`: see `dmax_jax/cli/convert.py` or `--help`."""

import sys

from dmax_jax.cli.convert import main

if __name__ == "__main__":
  sys.exit(main())
