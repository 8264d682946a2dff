#!/usr/bin/env python
"""`python train.py` = `dmax-train`: see `dmax_jax/cli/train.py` or `--help`."""

import sys

from dmax_jax.cli.train import main

if __name__ == "__main__":
  sys.exit(main())
