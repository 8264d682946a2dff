"""Trajectories and the OPUT data set: a base model answers training prompts, and every kept answer becomes
two training rows, once with `flag: true` (on-policy rollout) and once with `flag: false` (plain masked
input), shuffled: the format `train.py` reads, as DMax's `build_dataset_oput.py` makes it (the same seed, 42,
but Python's shuffle, not `datasets`', so the order differs).

Prompts are JSONL rows with a `question` (the user message, in the chat template as DMax's trajectories) and
optionally the record fields a task's scorer needs (`answer` for gsm8k / tiny) to keep only correct answers.
Decoding is resumable (`responses*.jsonl` is appended per decoding call of 8 batches) and splits over hosts: shard i of N answers
prompts i, i+N, ... into its own file; `build_oput` merges the shards once all are complete.

DMax does not publish the settings it decoded its trajectories with; the defaults here are the official
LLaDA2.0 `generate()`'s (threshold decoding, threshold 0.95, block 32) with 2048 generated tokens.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import random
import sys
from typing import Any, Sequence

from tqdm import tqdm

from dmax_jax.decoding import DecodeOptions, validate_prompts
from dmax_jax.errors import InputError
from dmax_jax.evaluation import sources
from dmax_jax.evaluation.runner import (BATCHES_PER_CALL, Model, append_lines, check_resumed, check_same_run,
                                       decode_batch, read_samples)
from dmax_jax.evaluation.tasks import Task
from dmax_jax.io import write_text_atomic
from dmax_jax.tokenization import chat_ids

DEFAULT_OPTIONS = DecodeOptions(mode="threshold", threshold=0.95, gen_length=2048)
OPUT_SHUFFLE_SEED = 42


def shard_path(out_dir: str, index: int, count: int) -> str:
  return os.path.join(out_dir, f"responses-{index:05d}-of-{count:05d}.jsonl")


def read_prompts(path: str) -> list[dict[str, Any]]:
  records = sources.read_records(path)
  sources.require_fields(records, ("question",), "trajectories", path)
  return records


def _keep(row, response: str, record: dict[str, Any], verify: Task | None) -> bool:
  """A trajectory is kept when it is complete (ended with EOS) and, with `verify`, correct."""
  return row.stopped_by_eos and (verify is None or bool(verify.score(response, record)[verify.strict]))


def decode_shard(model: Model, records: Sequence[dict[str, Any]], options: DecodeOptions, out_dir: str,
                 index: int = 0, count: int = 1, batch_size: int = 8, verify: Task | None = None,
                 progress: bool = True) -> dict[str, int]:
  """Answers prompts `index::count` of `records` into this shard's file, skipping those already there
  (refusing a directory of another checkpoint, decoding setting, check or shard count, or other prompts)."""
  if verify is not None:
    sources.require_fields(list(records), verify.fields, verify.name, "the prompts (--verify)")
  path = shard_path(out_dir, index, count)
  done = read_samples(path)
  check_resumed(path, done, {i: r["question"] for i, r in enumerate(records)}, "question")
  os.makedirs(out_dir, exist_ok=True)
  check_same_run(out_dir, {"checkpoint": os.path.abspath(model.path), "options": dataclasses.asdict(options),
                           "verify": None if verify is None else verify.name, "num_shards": count})
  pending = [i for i in range(index, len(records), count) if i not in done]
  prompts = {i: chat_ids(model.tokenizer, [{"role": "user", "content": records[i]["question"]}],
                         add_generation_prompt=True) for i in pending}
  if pending:
    validate_prompts(model.config, list(prompts.values()), options)
  kept = sum(s["kept"] for s in done.values())
  with tqdm(total=len(range(index, len(records), count)), initial=len(done), desc=f"trajectories {index}/{count}",
            unit="prompt", disable=not progress) as bar:
    for start in range(0, len(pending), batch_size * BATCHES_PER_CALL):
      ids = pending[start:start + batch_size * BATCHES_PER_CALL]
      rows, _, _ = decode_batch(model, [prompts[i] for i in ids], options, batch_size, ids,
                                queue_length=batch_size * BATCHES_PER_CALL)
      lines = []
      for i, row in zip(ids, rows):
        response = model.tokenizer.decode(row.ids, skip_special_tokens=True)
        lines.append({"doc_id": i, "question": records[i]["question"], "response": response,
                      "kept": _keep(row, response, records[i], verify), "nfe": row.nfe})
      append_lines(path, lines)
      kept += sum(line["kept"] for line in lines)
      bar.update(len(lines))
      bar.set_postfix_str(f"kept {kept}")
  return {"prompts": len(done) + len(pending), "kept": kept}


def oput_rows(question: str, response: str) -> list[dict[str, Any]]:
  """One trajectory as its two OPUT rows (flag true, then false)."""
  return [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": response}],
           "flag": flag} for flag in (True, False)]


def build_oput(out_dir: str, count: int, num_prompts: int, seed: int = OPUT_SHUFFLE_SEED) -> dict[str, int]:
  """Merges the `count` shard files of `out_dir` into `out_dir/oput.jsonl`; refuses while any is incomplete."""
  responses: dict[int, dict[str, Any]] = {}
  for index in range(count):
    responses.update(read_samples(shard_path(out_dir, index, count)))
  responses = {i: r for i, r in responses.items() if i < num_prompts}
  missing = num_prompts - len(responses)
  if missing:
    found = sorted(glob.glob(os.path.join(out_dir, "responses-*.jsonl")))
    raise InputError(f"{missing} of {num_prompts} prompts have no response yet in {out_dir} ({len(found)} shard "
                     f"files): finish every shard first")
  rows = [row for i in sorted(responses) if responses[i]["kept"]
          for row in oput_rows(responses[i]["question"], responses[i]["response"])]
  if not rows:
    raise InputError(f"none of the {num_prompts} responses was kept (complete and, if checked, correct)")
  random.Random(seed).shuffle(rows)
  write_text_atomic(os.path.join(out_dir, "oput.jsonl"), (json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  return {"prompts": num_prompts, "kept": len(rows) // 2, "rows": len(rows)}


if __name__ == "__main__":
  from dmax_jax.cli.trajectories import main
  sys.exit(main())
