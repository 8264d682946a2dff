"""Execution-based scoring of generated programs (HumanEval, MBPP): each program runs in a fresh Python
interpreter in its own process group and temporary directory, with a wall-clock timeout and resource limits
(address space, CPU seconds, file size, no core dumps), never inside the evaluating process.

A program passes when it exits with status 0 *and* prints a random token placed after the tests, so a
completion that calls `sys.exit(0)` / `os._exit(0)` before the tests run, or dies in any other way, fails.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
from typing import Iterable, Sequence

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_BYTES = 4 * 2**30
MAX_FILE_BYTES = 16 * 2**20
_FENCED_PYTHON = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class ExecutionResult:
  """status: "passed", "failed" (non-zero exit, an exception or no completion token) or "timeout";
  detail: the last line of stderr, or why it failed."""
  status: str
  detail: str = ""

  @property
  def passed(self) -> bool:
    return self.status == "passed"


def first_python_block(response: str) -> str:
  """The code of the first fenced ```python block of a response (the DMax protocol), else the response."""
  match = _FENCED_PYTHON.search(response)
  return match.group(1) if match else response


def definitions_only(code: str) -> str:
  """The imports, functions and classes of `code` (DMax's post-processing drops example calls, prints and
  asserts around the solution); `code` unchanged when it does not parse or defines nothing."""
  try:
    tree = ast.parse(code)
  except (SyntaxError, ValueError):
    return code
  kept = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                          ast.Import, ast.ImportFrom))]
  return "\n\n".join(ast.unparse(node) for node in kept) if kept else code


def humaneval_program(problem: dict, completion: str) -> str:
  """A HumanEval problem's check program: prompt + completion, its `check` function, `check(entry_point)`.
  A completion that restates the whole function (chat models do) is used without the prompt."""
  body = completion if f"def {problem['entry_point']}" in completion else problem["prompt"] + completion
  return f"{body}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def mbpp_program(code: str, test_setup: str, tests: Sequence[str]) -> str:
  """An MBPP check program: the code, the setup code, then each `assert`."""
  return "\n".join([code, test_setup, *tests]) + "\n"


def _limits_header(memory_bytes: int, cpu_seconds: int) -> str:
  """Code that caps the interpreter's own resources before the program runs (hard limits: the program cannot
  raise them; set inside the child instead of a `preexec_fn`, which is unsafe in a threaded parent like JAX)."""
  limits = {"RLIMIT_AS": memory_bytes, "RLIMIT_CPU": cpu_seconds, "RLIMIT_FSIZE": MAX_FILE_BYTES, "RLIMIT_CORE": 0}
  lines = ["import resource as _dmax_resource"]
  lines += [f"_dmax_resource.setrlimit(_dmax_resource.{name}, ({value}, {value}))" for name, value in limits.items()]
  return "\n".join(lines) + "\ndel _dmax_resource\n"


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                memory_bytes: int = DEFAULT_MEMORY_BYTES) -> ExecutionResult:
  """Runs `program` (its tests included) in a sandboxed subprocess; see the module docstring."""
  token = secrets.token_hex(16)
  source = (_limits_header(memory_bytes, int(timeout_s) + 1) + program +
            f"\n\nimport sys as _dmax_sys\n_dmax_sys.stdout.write({token!r})\n_dmax_sys.stdout.flush()\n")
  with tempfile.TemporaryDirectory(prefix="dmax-exec-") as workdir:
    path = os.path.join(workdir, "program.py")
    with open(path, "w") as f:
      f.write(source)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", path], cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, env={"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8"})
    try:
      out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.communicate()
      return ExecutionResult("timeout", f"no result after {timeout_s:g} s")
  stderr_lines = err.decode(errors="replace").strip().splitlines()
  last = stderr_lines[-1] if stderr_lines else ""
  if proc.returncode == 0 and token in out.decode(errors="replace"):
    return ExecutionResult("passed")
  if proc.returncode < 0:
    return ExecutionResult("failed", f"killed by signal {-proc.returncode} {last}".strip())
  return ExecutionResult("failed", last or f"exit status {proc.returncode} before the tests finished")


def run_programs(programs: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_bytes: int = DEFAULT_MEMORY_BYTES, workers: int | None = None) -> list[ExecutionResult]:
  """`run_program` over many programs, `workers` at a time (default: the CPU count), results in order."""
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    return list(pool.map(lambda p: run_program(p, timeout_s, memory_bytes), programs))
