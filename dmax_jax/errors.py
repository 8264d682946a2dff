"""The project's one exception for bad input, which the command-line tools report without a traceback."""


class InputError(ValueError):
  """Bad input from the user: a flag, a file, a checkpoint or a config value. The message names it and says
  what was expected; `dmax_jax.cli` prints it as one line (`error: ...`) and exits with status 2."""
