"""Whole-checkpoint conversions (HF <-> this project's Orbax format), atomic and streaming.

Both directions write into a hidden temporary folder next to the destination and rename it at the
very end, so a failure never leaves something that looks like a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from dmax_jax.checkpoint import hf_mapping, orbax_format
from dmax_jax.checkpoint.hf_export import DEFAULT_SHARD_BYTES, ReadSlice, export_hf_weights
from dmax_jax.checkpoint.hf_import import HFCheckpoint, dtype_name, variable_paths
from dmax_jax.config import ModelConfig
from dmax_jax.errors import InputError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
EXPERT_BIAS = "buffers/moe_layers/layers/mlp/expert_bias"


@dataclasses.dataclass(frozen=True)
class Summary:
  tensors: int
  bytes: int
  seconds: float

  def __str__(self) -> str:
    return (f"{self.tensors} tensors, {self.bytes / 1e9:.3f} GB, {self.seconds:.1f} s "
            f"({self.bytes / 1e6 / max(self.seconds, 1e-9):.0f} MB/s)")


def parse_size(text: str | int) -> int:
  """`"5GB"` -> 5e9, `"500MB"`, `"2GiB"`, `"1234"` (bytes)."""
  if isinstance(text, int):
    return text
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
  if not m or float(m.group(1)) <= 0:
    raise InputError(f"invalid size {text!r}: expected e.g. 500MB, 5GB, 2GiB or a byte count")
  return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


@contextlib.contextmanager
def staged_directory(destination: str, overwrite: bool = False) -> Iterator[str]:
  """Yields an empty hidden folder beside `destination`, renamed to it on success, deleted on failure."""
  destination = os.path.abspath(destination)
  if os.path.exists(destination) and not overwrite:
    raise FileExistsError(f"{destination} already exists (pass --overwrite / overwrite=True to replace it)")
  parent = os.path.dirname(destination)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.partial-", dir=parent)
  try:
    yield staging
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp creates it private
    if os.path.exists(destination):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(destination)}.old-", dir=parent)
      os.rename(destination, os.path.join(old, "replaced"))
      os.rename(staging, destination)
      shutil.rmtree(old)
    else:
      os.rename(staging, destination)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _check_distinct(src: str, dst: str) -> None:
  if os.path.realpath(src) == os.path.realpath(dst):
    raise InputError(f"source and destination are the same folder: {src}")


def hf_to_jax(src: str, dst: str, dtype: Any = None, overwrite: bool = False,
              progress: bool = True) -> Summary:
  """Converts a Hugging Face checkpoint folder into this project's format (see `converted`).

  Args:
    dtype: parameter dtype to store (default: the checkpoint's); expert_bias stays float32.
  """
  start = time.perf_counter()
  _check_distinct(src, dst)
  cfg = ModelConfig.from_json(src)
  ckpt = HFCheckpoint(src, cfg)
  cfg = cfg.replace(param_dtype=dtype_name(dtype or ckpt.dtype))
  bias = ckpt.sources.get(EXPERT_BIAS)
  with staged_directory(dst, overwrite) as staging, ckpt.progress("hf-to-jax", progress) as bar:
    scratch = tempfile.mkdtemp(prefix=".buffers-", dir=staging)
    orbax_format.save_streaming(staging, cfg, lambda p, out: ckpt.fill(p, out, lambda _: bar.update()),
                             scratch)
    shutil.rmtree(scratch)
    orbax_format.copy_aux_files(src, staging)
    orbax_format.write_marker(
        staging, cfg.param_dtype, source_dtype=dtype_name(ckpt.dtype),
        source_buffer_dtype=dtype_name(bias[0].file.dtype(bias[0].name)) if bias else None)
  return Summary(ckpt.num_tensors, ckpt.num_bytes, time.perf_counter() - start)


def _write_hf_config(config_path: str, dst: str, param_dtype: str) -> None:
  """Copies the config.json at `config_path` verbatim, unless its dtype field differs from
  `param_dtype`: then only that field is updated."""
  with open(config_path) as f:
    text = f.read()
  hf = json.loads(text)
  keys = [k for k in ("torch_dtype", "dtype") if k in hf and hf[k] != param_dtype]
  if keys:
    hf.update({k: param_dtype for k in keys})
    text = json.dumps(hf, indent=2) + "\n"
  with open(os.path.join(dst, "config.json"), "w") as f:
    f.write(text)


def _write_hf(dst: str, cfg: ModelConfig, read: ReadSlice, source: str, param_dtype: str, buffer_dtype: str,
              merged_experts: bool, shard_size: str | int, overwrite: bool, progress: bool) -> Summary:
  """Safetensors from `read` + config.json (and tokenizer files) of `source`, staged. `source` is a
  checkpoint folder, or a bare config.json (e.g. of a randomly initialised model)."""
  start = time.perf_counter()

  def dtypes(path: str) -> str:
    return buffer_dtype if path.startswith("buffers/") else param_dtype

  total = sum(1 for _ in hf_mapping.expected_hf_names(cfg, merged_experts))
  with staged_directory(dst, overwrite) as staging, \
      tqdm(total=total, desc="jax-to-hf", unit="tensor", disable=not progress) as bar:
    count, nbytes = export_hf_weights(staging, cfg, read, dtypes, merged_experts, parse_size(shard_size),
                                      on_tensor=lambda *_: bar.update())
    config_path = source
    if os.path.isdir(source):
      orbax_format.copy_aux_files(source, staging)
      config_path = os.path.join(source, "config.json")
    _write_hf_config(config_path, staging, param_dtype)
  return Summary(count, nbytes, time.perf_counter() - start)


def jax_to_hf(src: str, dst: str, merged_experts: bool = False, shard_size: str | int = DEFAULT_SHARD_BYTES,
              dtype: Any = None, overwrite: bool = False, progress: bool = True) -> Summary:
  """Exports a converted checkpoint as Hugging Face safetensors, reading one layer/expert at a time.

  Args:
    merged_experts: stacked `mlp.experts.*_proj` `[E, out, in]` instead of per-expert tensors.
    shard_size: maximum bytes per safetensors file ("5GB", "500MB", or an int); one
      `model.safetensors` (no index) when everything fits in one.
    dtype: parameter dtype of the output (default: as stored); the expert_bias keeps the dtype it had
      in the original Hugging Face checkpoint (float32 if unknown).
  """
  _check_distinct(src, dst)
  marker = orbax_format.read_marker(src)
  cfg = ModelConfig.from_json(src)
  return _write_hf(dst, cfg, orbax_format.LeafReader(src, cfg), src, dtype_name(dtype or marker["param_dtype"]),
                   marker.get("source_buffer_dtype") or "float32", merged_experts, shard_size, overwrite,
                   progress)


def variables_to_hf(variables: dict, cfg: ModelConfig, dst: str, source: str, merged_experts: bool = False,
                    shard_size: str | int = DEFAULT_SHARD_BYTES, dtype: Any = None, overwrite: bool = False,
                    progress: bool = False) -> Summary:
  """Exports in-memory variables (e.g. after training; numpy or jax arrays, sharded or not) as a
  Hugging Face folder, one tensor at a time.

  Args:
    source: folder whose config.json (kept verbatim apart from its dtype field) and tokenizer files
      are copied: the Hugging Face or converted checkpoint the variables came from; or a config.json.
    dtype: parameter dtype of the output (default: `cfg.param_dtype`); expert_bias is float32.
  """
  flat = variable_paths(variables)
  return _write_hf(dst, cfg, lambda p, i: np.asarray(flat[p][i]), source,
                   dtype_name(dtype or cfg.param_dtype), "float32", merged_experts, shard_size, overwrite,
                   progress)
