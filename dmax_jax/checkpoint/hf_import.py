"""Hugging Face safetensors -> this project's variables, one tensor at a time."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from dmax_jax.checkpoint import hf_mapping
from dmax_jax.checkpoint.safetensors_io import CheckpointError, iter_tensors
from dmax_jax.config import ModelConfig
from dmax_jax.model import abstract_variables


def variable_paths(abstract: Any) -> dict[str, jax.ShapeDtypeStruct]:
  """`{"params/a/b": leaf}` for a nested-dict variables pytree."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    out["/".join(str(p.key) for p in path)] = leaf
  return out


def set_path(tree: dict, path: str, value: Any) -> None:
  *parents, last = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[last] = value


def iter_converted(directory: str, cfg: ModelConfig
                   ) -> Iterator[tuple[str, tuple[tuple[str, tuple[int, ...], np.ndarray], ...]]]:
  """Yields `(hf_name, ((variable path, index, array), ...))` per HF tensor, validating names/shapes.

  Arrays keep the checkpoint's dtype; expected shapes come from the config, so a config that does not
  match the weights fails here with the tensor's name.
  """
  shapes = variable_paths(abstract_variables(cfg))
  for name, f in iter_tensors(directory):
    rule, slots = hf_mapping.slots_for(name, cfg)
    parts = rule.to_jax(f.read(name), cfg)
    out = []
    for (path, index), part in zip(slots, parts):
      want = shapes[path].shape[len(index):]
      if tuple(part.shape) != tuple(want):
        raise CheckpointError(
            f"tensor {name!r} has shape {f.shape(name)}, which does not fit {path} (expected "
            f"{want} after conversion, got {tuple(part.shape)}): does config.json match the weights?")
      out.append((path, index, part))
    yield name, tuple(out)


def check_complete(seen: set[str], cfg: ModelConfig) -> None:
  """Raises naming the missing tensors unless `seen` covers the per-expert or the merged layout."""
  missing = [[n for n in hf_mapping.expected_hf_names(cfg, merged) if n not in seen]
             for merged in (False, True)]
  if all(missing):
    closest = min(missing, key=len)
    shown = ", ".join(repr(n) for n in closest[:5])
    more = f" and {len(closest) - 5} more" if len(closest) > 5 else ""
    raise CheckpointError(f"checkpoint is missing {len(closest)} tensor(s): {shown}{more}")


def load_hf_variables(directory: str, cfg: ModelConfig, dtype: Any = None,
                      progress: bool = False) -> dict:
  """Reads a Hugging Face LLaDA2-MoE checkpoint into a host (numpy) variables pytree.

  Args:
    directory: folder with config.json and safetensors (single file, sharded, per-expert or merged).
    cfg: the model config (its `param_dtype` is used unless `dtype` is given).
    dtype: parameter dtype; the `expert_bias` buffer stays float32.
  """
  abstract = variable_paths(abstract_variables(cfg))
  param_dtype = np.dtype(dtype or cfg.param_dtype)
  arrays = {p: np.empty(s.shape, np.float32 if p.startswith("buffers/") else param_dtype)
            for p, s in abstract.items()}
  seen: set[str] = set()
  it: Iterator = iter_converted(directory, cfg)
  if progress:
    it = tqdm(it, desc="loading tensors", unit="tensor")
  for name, parts in it:
    seen.add(name)
    for path, index, part in parts:
      arrays[path][index] = part
  check_complete(seen, cfg)
  variables: dict = {}
  for path, arr in arrays.items():
    set_path(variables, path, arr)
  return variables
