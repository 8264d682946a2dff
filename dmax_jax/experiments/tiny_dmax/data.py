"""JSONL rows in the trainer's chat format: `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}],
"flag": bool}` (`flag` true = on-policy rollout for that row in OPUT, false = plain masked input)."""

from __future__ import annotations

import json
from typing import Any, Iterable

from dmax_jax.experiments.tiny_dmax import task
from dmax_jax.io import write_text_atomic


def chat_row(question: str, answer: str, flag: bool) -> dict[str, Any]:
  return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
          "flag": bool(flag)}


def sft_rows(problems: Iterable[task.Problem], seed: int = 0, flag: bool = False,
             cfg: task.TaskConfig = task.TaskConfig()) -> list[dict[str, Any]]:
  """Base-model training rows: every problem with one random worked solution (fixed by seed and problem);
  `flag` false = plain masked-diffusion SFT."""
  return [chat_row(p.prompt, task.solution_for(p, seed, cfg), flag) for p in problems]


def write_jsonl(path: str, rows: Iterable[dict[str, Any]]) -> str:
  """Writes one JSON object per line (UTF-8, atomically); returns `path`."""
  return write_text_atomic(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]
