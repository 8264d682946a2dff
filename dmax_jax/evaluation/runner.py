"""Evaluating a checkpoint on a task: decode its prompts in batches, score every response, and keep
`samples.jsonl` (one line per finished sample, appended and synced after each decoding call of 8 batches) so a
killed run resumes where it stopped; `results.json` and `results.md` summarise all samples.

Protocol (DMax's evaluation): the prompt is the task's user message in the tokenizer's chat template; the
response is every generated token except EOS (dInfer keeps non-EOS tokens after the first EOS) in SPD mode,
the official generate()'s answer in threshold mode; TPF counts generated non-EOS tokens per forward.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from dmax_jax import sharding
from dmax_jax.compile_time import compile_seconds
from dmax_jax.decoding import DecodeOptions, generate, prompt_bucket, validate_prompts
from dmax_jax.decoding.results import RowResult
from dmax_jax.errors import InputError
from dmax_jax.evaluation import summary
from dmax_jax.evaluation.tasks import Record, Task
from dmax_jax.io import write_text_atomic
from dmax_jax.tokenization import chat_ids

SAMPLES, RUN = "samples.jsonl", "run.json"


@dataclasses.dataclass(frozen=True)
class Model:
  """A loaded checkpoint: config, variables, tokenizer, where it came from and its mesh (None: one device)."""
  config: Any
  variables: Any
  tokenizer: Any
  path: str
  mesh: Any = None


def read_samples(path: str) -> dict[int, dict[str, Any]]:
  """Finished samples by doc id. A torn last line (a kill mid-write: no newline yet) is dropped and the file
  rewritten without it."""
  if not os.path.exists(path):
    return {}
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  if lines and not lines[-1].endswith("\n"):
    lines.pop()
    write_text_atomic(path, lines)
  samples = {}
  for number, line in enumerate(lines, 1):
    try:
      sample = json.loads(line)
    except json.JSONDecodeError:
      raise InputError(f"{path}: line {number} is not JSON; fix or remove the file to start over") from None
    samples[sample["doc_id"]] = sample
  return samples


def check_resumed(path: str, done: dict[int, dict[str, Any]], expected: dict[int, str], field: str) -> None:
  """Refuses finished samples whose `field` differs from what the current records give (another data file)."""
  for i, sample in done.items():
    if i in expected and sample[field] != expected[i]:
      raise InputError(f"{path} holds another {field} for record {i} (a run on other data?); use another --output")


def check_same_run(out_dir: str, identity: dict[str, Any]) -> None:
  """Refuses to mix samples of another task, checkpoint or decoding setting into `out_dir`."""
  path = os.path.join(out_dir, RUN)
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    changed = sorted(k for k in stored.keys() | identity.keys() if stored.get(k) != identity.get(k))
    if changed:
      raise InputError(f"{out_dir} holds an evaluation with other settings ({', '.join(changed)}); "
                       "use another --output")
  else:
    write_text_atomic(path, json.dumps(identity, indent=1) + "\n")


def response_text(model: Model, row: RowResult, options: DecodeOptions) -> str:
  """The text a benchmark scores: the rule's response ids, special tokens dropped."""
  eos_id, _ = options.special_ids(model.config)
  ids = options.rule(model.config).response(np.asarray(row.generated), eos_id, options.gen_length)
  return model.tokenizer.decode(ids.tolist(), skip_special_tokens=True)


def _sample(task: Task, doc_id: int, record: Record, prompt: str, response: str, row: RowResult,
            seconds: float) -> dict[str, Any]:
  scores = task.score(response, record)
  return {"doc_id": doc_id, "prompt": prompt, "response": response, "extracted": task.extract(response),
          "reference": task.reference(record), "scores": scores, "correct": scores[task.strict],
          "nfe": row.nfe, "generated_tokens": row.num_tokens, "stopped_by_eos": row.stopped_by_eos,
          "seconds": seconds}


def append_lines(path: str, samples: Sequence[dict[str, Any]]) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
    f.flush()
    os.fsync(f.fileno())


def sample_keys(seed: int, doc_ids: Sequence[int]) -> jax.Array:
  """Typed PRNG keys `[batch]`: record i samples with fold_in(key(seed), i), whatever its batch."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(doc_ids, jnp.int32))


BATCHES_PER_CALL = 8
"""Evaluation and trajectory building decode `BATCHES_PER_CALL x batch_size` prompts per compiled call (rows that
finish take the next prompt) and append their samples after each call."""


def decode_batch(model: Model, prompts: list[list[int]], options: DecodeOptions, batch_size: int,
                 doc_ids: Sequence[int] | None = None, seed: int = 0, prompt_width: int | None = None,
                 queue_length: int | None = None) -> tuple[list[RowResult], float, float]:
  """Rows of `prompts` decoded `batch_size` at a time in one compiled call (a row that finishes takes the next
  prompt), wall seconds and the compile seconds within them. The queue is padded to `queue_length` rows (never
  decoded; default `batch_size`), so calls of up to that many prompts in the same bucket reuse one compiled
  program (`prompt_width` fixes one width for every call). With `doc_ids`, sampling (temperature > 0) draws
  from `sample_keys(seed, doc_ids)`: results do not depend on batching."""
  width = prompt_width or prompt_bucket(max(len(p) for p in prompts), options.block_length)
  keys = None if doc_ids is None else sample_keys(seed, doc_ids)
  compiled, start = compile_seconds(), time.perf_counter()
  with sharding.use_mesh(model.mesh) if model.mesh is not None else contextlib.nullcontext():
    rows = generate(model.config, model.variables, prompts, options, keys=keys, prompt_width=width,
                    batch_size=batch_size, queue_length=queue_length or batch_size)
  return rows, time.perf_counter() - start, compile_seconds() - compiled


def evaluate(task: Task, records: Sequence[Record], model: Model, options: DecodeOptions, out_dir: str,
             batch_size: int = 1, progress: bool = True, seed: int = 0) -> dict[str, Any]:
  """Evaluates `records` (doc id = index), resuming from `out_dir/samples.jsonl`; returns the summary
  (also written to `out_dir/results.json` and `out_dir/results.md`). Record i samples with
  fold_in(key(seed), i) when the temperature is > 0."""
  if jax.process_count() > 1:
    raise InputError("evaluation runs in one process (one host: a GPU machine or a single-host TPU slice); "
                     f"this is process {jax.process_index()} of {jax.process_count()}")
  path = os.path.join(out_dir, SAMPLES)
  done = read_samples(path)
  messages = {i: task.prompt(record) for i, record in enumerate(records)}
  check_resumed(path, done, messages, "prompt")
  pending = [i for i in range(len(records)) if i not in done]
  prompts = {i: chat_ids(model.tokenizer, [{"role": "user", "content": messages[i]}], add_generation_prompt=True)
             for i in pending}
  if pending:
    validate_prompts(model.config, list(prompts.values()), options)
  os.makedirs(out_dir, exist_ok=True)
  check_same_run(out_dir, {"task": task.name, "checkpoint": os.path.abspath(model.path),
                           "options": dataclasses.asdict(options), "seed": seed})
  tally = summary.Tally(task, [done[i] for i in sorted(done) if i < len(records)])
  compile_total = 0.0
  with tqdm(total=len(records), initial=len(records) - len(pending), desc=task.name, unit="sample",
            disable=not progress) as bar:
    bar.set_postfix_str(tally.postfix())
    for start in range(0, len(pending), batch_size * BATCHES_PER_CALL):
      ids = pending[start:start + batch_size * BATCHES_PER_CALL]
      rows, seconds, compiled = decode_batch(model, [prompts[i] for i in ids], options, batch_size, ids, seed,
                                             queue_length=batch_size * BATCHES_PER_CALL)
      compile_total += compiled
      per_row = (seconds - compiled) / len(ids)
      batch = [_sample(task, i, records[i], messages[i], response_text(model, row, options), row, per_row)
               for i, row in zip(ids, rows)]
      append_lines(path, batch)
      tally.add(batch)
      bar.update(len(batch))
      bar.set_postfix_str(tally.postfix())
  result = tally.summary()
  result.update({"checkpoint": model.path, "options": dataclasses.asdict(options),
                 "threshold": options.resolved_threshold, "batch_size": batch_size,
                 "compile_seconds_this_run": compile_total})
  write_text_atomic(os.path.join(out_dir, "results.json"), json.dumps(result, indent=1) + "\n")
  write_text_atomic(os.path.join(out_dir, "results.md"), summary.markdown([result]))
  return result
