"""This project's variables -> Hugging Face safetensors (sharded, per-expert or merged experts), streaming.

Tensors are produced one at a time in the official order (`hf_mapping.expected_hf_names`) from a
`read(path, index)` callable that returns one slice of a variable (e.g. one layer's query weight or
one expert of one layer), so exporting never needs the whole model in memory.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from dmax_jax.checkpoint import hf_mapping
from dmax_jax.checkpoint.hf_import import variable_paths
from dmax_jax.checkpoint.safetensors_io import INDEX_FILE, SafetensorsWriter
from dmax_jax.config import ModelConfig
from dmax_jax.model import abstract_variables

SINGLE_FILE = "model.safetensors"
DEFAULT_SHARD_BYTES = 5 * 10**9  # as transformers' "5GB"
ReadSlice = Callable[[str, tuple[int, ...]], np.ndarray]


def plan_shards(nbytes: dict[str, int], shard_bytes: int) -> list[list[str]]:
  """Groups tensors (in order) into shards of at most `shard_bytes` (a larger tensor gets its own)."""
  shards: list[list[str]] = [[]]
  size = 0
  for name, n in nbytes.items():
    if shards[-1] and size + n > shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(name)
    size += n
  return shards


def shard_file_names(count: int) -> list[str]:
  if count == 1:
    return [SINGLE_FILE]
  return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def export_hf_weights(directory: str, cfg: ModelConfig, read: ReadSlice, dtypes: Callable[[str], Any],
                      merged_experts: bool = False, shard_bytes: int = DEFAULT_SHARD_BYTES,
                      on_tensor: Callable[[str, int], None] | None = None) -> tuple[int, int]:
  """Writes the safetensors files (and the index when sharded) of `cfg`'s variables into `directory`.

  Args:
    read: `read(variable path, index)` -> that slice of the variable.
    dtypes: variable path -> dtype of the HF tensors made from it.
    merged_experts: write `mlp.experts.{gate,up,down}_proj` stacked `[E, out, in]` instead of
      per-expert `mlp.experts.{e}.*.weight`.
    on_tensor: called with (name, bytes) after each tensor is written (progress).

  Returns:
    (number of tensors, number of tensor bytes).
  """
  shapes = {p: leaf.shape for p, leaf in variable_paths(abstract_variables(cfg)).items()}
  slots, nbytes = {}, {}
  for name in hf_mapping.expected_hf_names(cfg, merged_experts):
    _, slots[name] = hf_mapping.slots_for(name, cfg)
    nbytes[name] = sum(int(np.prod(shapes[p][len(i):], dtype=np.int64)) * np.dtype(dtypes(p)).itemsize
                       for p, i in slots[name])
  shards = plan_shards(nbytes, shard_bytes)
  files = shard_file_names(len(shards))
  weight_map = {}
  for file, names in zip(files, shards):
    with SafetensorsWriter(os.path.join(directory, file), {n: nbytes[n] for n in names},
                           metadata={"format": "pt"}) as writer:
      for name in names:
        rule, _ = hf_mapping.slots_for(name, cfg)
        parts = tuple(np.asarray(read(p, i)).astype(dtypes(p), copy=False) for p, i in slots[name])
        writer.write(name, rule.to_hf(parts, cfg))
        weight_map[name] = file
        if on_tensor is not None:
          on_tensor(name, nbytes[name])
  total = sum(nbytes.values())
  if len(files) > 1:
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
  return len(nbytes), total
