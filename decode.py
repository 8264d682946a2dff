#!/usr/bin/env python
"""`python decode.py` = `dmax-decode`: see `dmax_jax/cli/decode.py` or `--help`."""

import sys

from dmax_jax.cli.decode import main

if __name__ == "__main__":
  sys.exit(main())
