"""One error and exit-code policy for every command-line tool.

Expected failures (bad flags, missing or malformed files, a config that does not fit the weights) are one
`error: ...` line on stderr and exit status 2; Ctrl-C outside a training loop is one line and status 130.
Anything else is a bug and keeps its traceback. `--debug` shows the traceback of expected failures too.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Sequence

from dmax_jax.errors import InputError

USAGE_ERROR = 2
INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
  """`argparse` with the policy: a bad flag is one line (no usage block), and every tool has `--debug`."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)
    if kwargs.get("add_help", True):
      self.add_argument("--debug", action="store_true",
                        help="show Python tracebacks for expected errors (bad input) as well")

  def error(self, message: str):
    self.exit(USAGE_ERROR, f"error: {message} (see --help)\n")


def describe(error: BaseException) -> str:
  """The one-line message of an expected error."""
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    text = f"{error.filename}: {error.strerror}"
  else:
    text = str(error) or type(error).__name__
  return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr)


def command(main: Callable[[Sequence[str]], int]) -> Callable[[Sequence[str] | None], int]:
  """Wraps a tool's `main(argv) -> exit status` with the policy (argv None = `sys.argv[1:]`)."""

  @functools.wraps(main)
  def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
      return main(argv)
    except (InputError, OSError) as e:
      if "--debug" in argv:
        raise
      print(f"error: {describe(e)}", file=sys.stderr)
      return USAGE_ERROR
    except KeyboardInterrupt:
      if "--debug" in argv:
        raise
      print("interrupted", file=sys.stderr)
      return INTERRUPTED

  return run


def positive_int(text: str) -> int:
  value = int(text)
  if value <= 0:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
  return value


def nonnegative_int(text: str) -> int:
  value = int(text)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
  return value


def nonnegative_float(text: str) -> float:
  value = float(text)
  if not value >= 0:  # also rejects nan
    raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
  return value


def confidence(text: str) -> float:
  value = float(text)
  if not 0.0 <= value <= 1.0:
    raise argparse.ArgumentTypeError(f"must be a confidence in [0, 1], got {text}")
  return value
