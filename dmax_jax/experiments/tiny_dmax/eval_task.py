"""The tiny word-problem task as an evaluation task (`evaluate.py --task tiny`): the test split the pipeline
evaluates on (500 problems, seed 0), or a JSONL of `{"question", "answer"}` records given with --data.

Strict: "The answer is N" with the right N (the pipeline's scorer); lenient: DMax's GSM8K rules on the number.
"""

from __future__ import annotations

from dmax_jax.evaluation import gsm8k
from dmax_jax.evaluation.tasks import Record, Scores, Task
from dmax_jax.experiments.tiny_dmax import pipeline, task

_DEFAULTS = pipeline.PipelineConfig()


def test_records() -> list[Record]:
  return [{"question": p.prompt, "answer": str(p.answer)}
          for p in task.generate_split("test", _DEFAULTS.test_problems, seed=_DEFAULTS.seed)]


def _scores(response: str, record: Record) -> Scores:
  return {"answer-sentence": task.is_correct(response, int(record["answer"])),
          "lenient": None if gsm8k.unstable(response) else gsm8k.lenient_correct(response, record["answer"])}


def _extract(response: str) -> str | None:
  answer = task.extract_answer(response)
  return None if answer is None else str(answer)


TASK = Task(name="tiny", fields=("question", "answer"), prompt=lambda r: r["question"], reference=lambda r: r["answer"],
            score=_scores, extract=_extract, strict="answer-sentence", lenient="lenient", threshold=0.5,
            gen_length=_DEFAULTS.gen_length, builtin=test_records)
