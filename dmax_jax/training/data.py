"""OPUT training data with grain: JSONL rows -> `{noisy_ids, clean_ids, labels, flags}` batches.

Rows are chat conversations `{"messages": [...], "flag": bool}` (tokenised with the tokenizer's chat
template; the last message is the answer) or pre-tokenised `{"input_ids": [...], "prompt_lengths": N}`.
Sequences are truncated / padded with EOS to `max_seq_len`. Labels are the clean ids with the prompt
ignored (-100) and, of the trailing EOS run, only the first `eos_loss_tokens` kept. Every non-prompt
position is replaced by the mask id with probability t ~ U[noise_low, noise_high], drawn from an RNG
seeded by (seed, epoch, row), so the noise does not depend on shuffling, sharding or resumption.
Bad rows are counted and skipped with a warning.
"""

from __future__ import annotations

import json
import logging

from typing import Any

import grain
import numpy as np

from dmax_jax.errors import InputError
from dmax_jax.tokenization import chat_ids, load_tokenizer
from dmax_jax.training.loss import IGNORE_INDEX

log = logging.getLogger(__name__)


class JsonlSource(grain.sources.RandomAccessDataSource):
  """Random access to the non-blank lines of a JSONL file via byte offsets; items are `(row, bytes)`."""

  def __init__(self, path: str):
    self.path = path
    offsets, pos = [], 0
    with open(path, "rb") as f:
      for line in f:
        if line.strip():
          offsets.append((pos, len(line)))
        pos += len(line)
    if not offsets:
      raise InputError(f"{path} holds no rows")
    self._offsets = np.asarray(offsets, np.int64)

  def __len__(self) -> int:
    return len(self._offsets)

  def __getitem__(self, row: int) -> tuple[int, bytes]:
    start, size = self._offsets[row]
    with open(self.path, "rb") as f:
      f.seek(int(start))
      return int(row), f.read(int(size))

  def __repr__(self) -> str:
    return f"JsonlSource({self.path!r}, rows={len(self)})"


class BadRow(InputError):
  """A row that cannot become a training example (the message says why)."""


def build_labels(ids: np.ndarray, prompt_length: int, eos_id: int, eos_loss_tokens: int) -> np.ndarray:
  """Clean ids with the prompt and all but the first `eos_loss_tokens` of the trailing EOS run ignored."""
  labels = ids.astype(np.int32).copy()
  labels[:prompt_length] = IGNORE_INDEX
  not_eos = np.nonzero(ids != eos_id)[0]
  run_start = max(int(not_eos[-1]) + 1 if len(not_eos) else 0, prompt_length)
  labels[run_start + eos_loss_tokens:] = IGNORE_INDEX
  return labels


def add_noise(ids: np.ndarray, prompt_length: int, mask_id: int, low: float, high: float,
              rng: np.random.Generator) -> np.ndarray:
  """Each non-prompt position becomes `mask_id` with probability t ~ U[low, high]."""
  t = rng.uniform(low, high)
  masked = rng.random(ids.shape) < t
  masked[:prompt_length] = False
  return np.where(masked, mask_id, ids).astype(np.int32)


class OputExample:
  """Row bytes -> one training example (a dict of numpy arrays), or None for a bad row."""

  def __init__(self, *, num_rows: int, max_seq_len: int, eos_id: int, mask_id: int, noise_low: float,
               noise_high: float, eos_loss_tokens: int, default_flag: bool, seed: int,
               tokenizer: str | None = None):
    self.num_rows, self.max_seq_len, self.eos_id, self.mask_id = num_rows, max_seq_len, eos_id, mask_id
    self.noise = (noise_low, noise_high)
    self.eos_loss_tokens, self.default_flag, self.seed = eos_loss_tokens, default_flag, seed
    self.tokenizer_path = tokenizer
    self._tokenizer = None
    self.bad_rows = 0

  def _tokenize_chat(self, messages: Any) -> tuple[list[int], int]:
    if self.tokenizer_path is None:
      raise BadRow("chat rows need data.tokenizer")
    if not isinstance(messages, list) or len(messages) < 2 or not all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages):
      raise BadRow("messages must be a list of >= 2 {role, content} dicts")
    if self._tokenizer is None:
      self._tokenizer = load_tokenizer(self.tokenizer_path)
      if self._tokenizer is None:
        raise InputError(f"data.tokenizer: {self.tokenizer_path} has no tokenizer.json")
    prompt = chat_ids(self._tokenizer, messages[:-1], add_generation_prompt=True)
    full = chat_ids(self._tokenizer, messages)
    if full[:len(prompt)] != prompt:
      raise BadRow("the chat template of the prompt is not a prefix of the full conversation")
    return full, len(prompt)

  def parse(self, line: bytes) -> tuple[list[int], int, bool]:
    """`(ids, prompt_length, flag)` of one row; raises BadRow."""
    try:
      row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
      raise BadRow(f"not UTF-8 ({e.reason})") from e
    except json.JSONDecodeError as e:
      raise BadRow(f"not JSON ({e.msg})") from e
    if not isinstance(row, dict):
      raise BadRow("not a JSON object")
    flag = row.get("flag", self.default_flag)
    if not isinstance(flag, bool):
      raise BadRow(f"flag must be true/false, got {flag!r}")
    if "messages" in row:
      ids, prompt_length = self._tokenize_chat(row["messages"])
    elif "input_ids" in row and "prompt_lengths" in row:
      ids, prompt_length = row["input_ids"], row["prompt_lengths"]
      if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRow("input_ids must be a list of ints")
      if not isinstance(prompt_length, int) or prompt_length < 0:
        raise BadRow("prompt_lengths must be a non-negative int")
    else:
      raise BadRow("needs 'messages' or 'input_ids' + 'prompt_lengths'")
    if prompt_length >= min(len(ids), self.max_seq_len):
      raise BadRow(f"empty answer after truncation to {self.max_seq_len} tokens "
                   f"(prompt {prompt_length}, total {len(ids)})")
    return ids, prompt_length, flag

  def __call__(self, index: int, item: tuple[int, bytes]) -> dict[str, np.ndarray] | None:
    row, line = item
    try:
      ids, prompt_length, flag = self.parse(line)
    except BadRow as e:
      self.bad_rows += 1
      log.warning("skipping bad row %d (%d so far in this process): %s", row, self.bad_rows, e)
      return None
    clean = np.full(self.max_seq_len, self.eos_id, np.int32)
    ids = np.asarray(ids[:self.max_seq_len], np.int32)
    clean[:len(ids)] = ids
    epoch = index // self.num_rows
    rng = np.random.default_rng([self.seed, epoch, row])
    return {"noisy_ids": add_noise(clean, prompt_length, self.mask_id, *self.noise, rng),
            "clean_ids": clean,
            "labels": build_labels(clean, prompt_length, self.eos_id, self.eos_loss_tokens),
            "flags": np.asarray(flag)}


def make_dataset(data_cfg, *, rows_per_process: int, epochs: int, eos_id: int, mask_id: int,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Batches of `rows_per_process` examples for this process, over `epochs` reshuffled epochs.

  Each process reads every `process_count`-th example of the same global shuffled order.
  """
  source = JsonlSource(data_cfg.train_path)
  ds = grain.MapDataset.source(source)
  if data_cfg.shuffle:
    ds = ds.shuffle(seed=data_cfg.seed)
  example = OputExample(num_rows=len(source), max_seq_len=data_cfg.max_seq_len, eos_id=eos_id,
                        mask_id=mask_id, noise_low=data_cfg.noise_low, noise_high=data_cfg.noise_high,
                        eos_loss_tokens=data_cfg.eos_loss_tokens, default_flag=data_cfg.default_flag,
                        seed=data_cfg.seed, tokenizer=data_cfg.tokenizer)
  ds = ds.repeat(epochs).map_with_index(example)[process_index::process_count]
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=data_cfg.read_threads,
                                               prefetch_buffer_size=data_cfg.prefetch))
  it_ds = it_ds.batch(rows_per_process, drop_remainder=True)
  if data_cfg.worker_processes:
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (google/grain#1355)
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.worker_processes))
  return it_ds


