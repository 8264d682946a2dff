#!/usr/bin/env python
"""`python evaluate.py` = `dmax-evaluate`: see `dmax_jax/cli/evaluate.py` or `--help`."""

import sys

from dmax_jax.cli.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
