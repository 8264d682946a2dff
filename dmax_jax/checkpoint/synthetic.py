"""Random Hugging Face LLaDA2-MoE checkpoints of any size (for conversion tests and benchmarks).

Written with the streaming exporter from a deterministic per-slice random source, so even a large
checkpoint is produced without holding it in memory.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import numpy as np

from dmax_jax.checkpoint.hf_export import DEFAULT_SHARD_BYTES, export_hf_weights
from dmax_jax.checkpoint.hf_import import variable_paths
from dmax_jax.config import ModelConfig
from dmax_jax.model import abstract_variables

def write_synthetic_hf(directory: str, hf_config: dict[str, Any], dtype: str = "bfloat16",
                       buffer_dtype: str = "float32", merged_experts: bool = False,
                       shard_bytes: int = DEFAULT_SHARD_BYTES, seed: int = 0) -> int:
  """Writes `hf_config` as config.json (its torch_dtype set to `dtype`) and random safetensors of that
  architecture into the existing `directory`; returns the tensor bytes written."""
  cfg = ModelConfig.from_hf_dict(hf_config)
  shapes = {p: leaf.shape for p, leaf in variable_paths(abstract_variables(cfg)).items()}

  def read(path: str, index: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(f"{path}{index}".encode())])
    return rng.standard_normal(shapes[path][len(index):], np.float32)

  def dtypes(path: str) -> str:
    return buffer_dtype if path.startswith("buffers/") else dtype

  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({**hf_config, "torch_dtype": dtype}, f, indent=2)
  return export_hf_weights(directory, cfg, read, dtypes, merged_experts, shard_bytes)[1]
