"""This project's checkpoint format: an Orbax checkpoint of the variables tree plus the HF config.

Layout of a converted checkpoint directory:
  config.json            the original Hugging Face config.json, verbatim (auto_map/architectures kept)
  dmax_checkpoint.json   {"format": "dmax-jax", "format_version": 1, "param_dtype": ..., ...}
  params/                Orbax PyTree checkpoint of `{"params": ..., "buffers": ...}` (layout:
                         dmax_jax.model), zarr without OCDBT (OCDBT buffers a whole array in memory
                         while writing it); stacked variables are chunked per layer (and per expert),
                         so one layer/expert can be read without reading the rest
  tokenizer.json, ...    copies of the tokenizer/generation files of the source, when present

Writing streams from memory-mapped host buffers in a scratch folder (see `save_streaming`), so a
conversion never holds the model in anonymous memory.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from dmax_jax.checkpoint.hf_import import leaf_dtype, unflatten, variable_paths
from dmax_jax.checkpoint.safetensors_io import CheckpointError
from dmax_jax.config import ModelConfig
from dmax_jax.model import abstract_variables

FORMAT_NAME = "dmax-jax"
FORMAT_VERSION = 1
MARKER_FILE = "dmax_checkpoint.json"
PARAMS_DIR = "params"
CHUNK_BYTES = 256 * 2**20  # upper bound of one stored chunk (per layer / expert chunks are smaller)
# Files besides the weights that a model folder may carry and that we copy across conversions.
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
             "chat_template.json", "generation_config.json", "added_tokens.json", "vocab.json",
             "vocab.txt", "merges.txt", "tokenizer.model", "README.md", "LICENSE",
             "configuration_llada2_moe.py", "modeling_llada2_moe.py")


def is_converted(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MARKER_FILE))


def read_marker(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, MARKER_FILE)
  if not os.path.isfile(path):
    hint = (" (it holds Hugging Face safetensors: convert them with `hf-to-jax`)"
            if glob.glob(os.path.join(directory, "*.safetensors")) else "")
    raise CheckpointError(f"{directory} is not a dmax-jax checkpoint: no {MARKER_FILE}{hint}")
  try:
    with open(path) as f:
      marker = json.load(f)
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON: {e}") from None
  if marker.get("format") != FORMAT_NAME or marker.get("format_version") != FORMAT_VERSION:
    raise CheckpointError(f"{path}: unsupported checkpoint format {marker.get('format')!r} version "
                          f"{marker.get('format_version')!r} (expected {FORMAT_NAME!r} {FORMAT_VERSION})")
  if not os.path.isdir(os.path.join(directory, PARAMS_DIR)):
    raise CheckpointError(f"{directory}: {PARAMS_DIR}/ is missing (incomplete checkpoint)")
  return marker


def write_marker(directory: str, param_dtype: str, **extra: Any) -> None:
  with open(os.path.join(directory, MARKER_FILE), "w") as f:
    json.dump({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "param_dtype": param_dtype,
               **extra}, f, indent=2)


def copy_aux_files(src: str, dst: str) -> list[str]:
  """Copies `config.json` (verbatim) and the tokenizer/generation files present in `src`."""
  copied = []
  for name in ("config.json",) + AUX_FILES:
    if os.path.isfile(os.path.join(src, name)):
      shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def _orbax_name(path: str) -> str:
  return path.replace("/", ".")


def _storage_axes(path: str) -> tuple[int, ...]:
  """Axes stored one index per chunk: the layer axis, and the expert axis of expert weights."""
  if "_layers/" not in path:
    return ()
  return (0, 1) if "/experts_" in path else (0,)


def _checkpointer() -> ocp.Checkpointer:
  # Host arrays are written straight from their (memory-mapped) buffers: no defensive deep copy.
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.ArrayHandler()))
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                                      save_concurrent_gb=1, use_ocdbt=False))


def save_streaming(directory: str, cfg: ModelConfig, fill: Callable[[str, np.ndarray], None],
                   scratch: str) -> None:
  """Writes the Orbax variables checkpoint to `<directory>/params` one variable at a time.

  `fill(path, out)` writes variable `path` into `out`, a memory-mapped buffer in `scratch` of the
  config's `param_dtype` (float32 for buffers). Buffers are flushed and unmapped after filling, then
  handed to Orbax read-only, so resident memory is file-backed page cache the kernel can reclaim.
  """
  flat = {}
  for path, leaf in variable_paths(abstract_variables(cfg)).items():
    file = os.path.join(scratch, _orbax_name(path))
    buf = np.memmap(file, dtype=leaf_dtype(path, cfg.param_dtype), mode="w+", shape=leaf.shape)
    fill(path, buf)
    buf.flush()
    del buf
    flat[path] = np.memmap(file, dtype=leaf_dtype(path, cfg.param_dtype), mode="r", shape=leaf.shape)
  save_args = {p: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES, shard_axes=_storage_axes(p)) for p in flat}
  ckptr = _checkpointer()
  ckptr.save(os.path.join(os.path.abspath(directory), PARAMS_DIR),
             args=ocp.args.PyTreeSave(unflatten(flat), save_args=unflatten(save_args)))
  ckptr.close()


def _check_stored(directory: str, cfg: ModelConfig) -> dict[str, Any]:
  """Stored leaf metadata by path; raises naming the variable when names or shapes disagree with cfg."""
  params_dir = os.path.join(os.path.abspath(directory), PARAMS_DIR)
  meta = ocp.PyTreeCheckpointer().metadata(params_dir).item_metadata.tree
  stored = variable_paths(meta)
  want = variable_paths(abstract_variables(cfg))
  for path in sorted(set(want) | set(stored)):
    if path not in stored:
      raise CheckpointError(f"{params_dir}: variable {path} is missing")
    if path not in want:
      raise CheckpointError(f"{params_dir}: unexpected variable {path} (does config.json match?)")
    if tuple(stored[path].shape) != tuple(want[path].shape):
      raise CheckpointError(f"{params_dir}: variable {path} has shape {tuple(stored[path].shape)}, "
                            f"config.json implies {tuple(want[path].shape)}")
  return stored


def restore(directory: str, cfg: ModelConfig, shardings: Any) -> dict:
  """Restores the variables of a converted checkpoint, each leaf created directly with its sharding.

  Leaves are cast to `cfg.param_dtype` (buffers to float32) while reading; `shardings` is a pytree of
  `jax.sharding.Sharding` matching the variables (restoring onto any mesh works the same way).
  """
  stored = _check_stored(directory, cfg)
  flat_shardings = variable_paths(shardings)
  target = unflatten({p: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf_dtype(p, cfg.param_dtype),
                                              sharding=flat_shardings[p]) for p, leaf in stored.items()})
  restore_args = ocp.checkpoint_utils.construct_restore_args(target)
  with ocp.PyTreeCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(os.path.abspath(directory), PARAMS_DIR),
                         args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args))


class LeafReader:
  """Reads slices of stored variables (`reader(path, index)`) without restoring whole variables."""

  def __init__(self, directory: str, cfg: ModelConfig):
    self.params_dir = pathlib.Path(os.path.abspath(directory)) / PARAMS_DIR
    stored = _check_stored(directory, cfg)
    self.dtypes = {p: np.dtype(m.dtype) for p, m in stored.items()}
    self._stores: dict[str, ts.TensorStore] = {}
    self._ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(self.params_dir)
    self._context = ocp.type_handlers.get_ts_context(use_ocdbt=self._ocdbt)

  def __call__(self, path: str, index: tuple[int, ...]) -> np.ndarray:
    if path not in self._stores:
      info = ocp.type_handlers.ParamInfo(name=_orbax_name(path), parent_dir=self.params_dir,
                                         is_ocdbt_checkpoint=self._ocdbt, use_zarr3=False,
                                         ts_context=self._context)
      spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._ocdbt)
      self._stores[path] = ts.open(spec, open=True, context=self._context).result()
    return np.asarray(self._stores[path][index].read().result())
