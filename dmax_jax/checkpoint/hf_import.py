"""Hugging Face safetensors -> this project's variables, one variable (leaf) at a time.

`HFCheckpoint` reads only the safetensors headers up front: it maps every HF tensor to the variable
slots it fills (validating names, layers, experts and completeness), so each variable can later be
filled on its own from memory-mapped files. Peak memory is one variable plus one HF tensor.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from dmax_jax.checkpoint import hf_mapping
from dmax_jax.checkpoint.safetensors_io import CheckpointError, SafetensorsFile, iter_tensors
from dmax_jax.config import ModelConfig
from dmax_jax.model import abstract_variables


def variable_paths(abstract: Any) -> dict[str, Any]:
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


def unflatten(flat: dict[str, Any]) -> dict:
  """Inverse of `variable_paths`."""
  tree: dict = {}
  for path, value in flat.items():
    set_path(tree, path, value)
  return tree


def dtype_name(dtype: Any) -> str:
  """`"bfloat16"` for `jnp.bfloat16`, `"bfloat16"`, `np.dtype(ml_dtypes.bfloat16)`, ..."""
  return np.dtype(dtype).name


def leaf_dtype(path: str, param_dtype: Any) -> np.dtype:
  """Storage dtype of variable `path`: buffers (the router's expert_bias) always stay float32."""
  return np.dtype(np.float32) if path.startswith("buffers/") else np.dtype(param_dtype)


_LAYER_INDEX = re.compile(r"model\.layers\.(\d+)\.")


def check_complete(seen: set[str], cfg: ModelConfig) -> None:
  """Raises naming the missing tensors unless `seen` covers the per-expert or the merged layout."""
  missing = [[n for n in hf_mapping.expected_hf_names(cfg, merged) if n not in seen]
             for merged in (False, True)]
  if all(missing):
    layers = {int(m.group(1)) for m in map(_LAYER_INDEX.match, seen) if m}
    if layers and max(layers) + 1 < cfg.num_hidden_layers:
      raise CheckpointError(f"config.json has num_hidden_layers={cfg.num_hidden_layers}, the checkpoint's "
                            f"tensors have {max(layers) + 1} layers: the config does not match the weights")
    closest = min(missing, key=len)
    shown = ", ".join(repr(n) for n in closest[:5])
    more = f" and {len(closest) - 5} more" if len(closest) > 5 else ""
    raise CheckpointError(f"checkpoint is missing {len(closest)} tensor(s): {shown}{more}")


@dataclasses.dataclass(frozen=True)
class Source:
  """One HF tensor's contribution to a variable: part `part` of `rule.to_jax(tensor)` goes to `index`."""
  name: str
  file: SafetensorsFile
  rule: hf_mapping.Rule
  part: int
  index: tuple[int, ...]


class HFCheckpoint:
  """A validated index of a Hugging Face LLaDA2-MoE checkpoint directory (headers only, no data read).

  Attributes:
    sources: variable path -> the `Source`s that fill it.
    shapes: variable path -> expected shape (from the config).
    dtype: the checkpoint's floating dtype (that of the embedding table).
    num_tensors, num_bytes: size of the HF checkpoint.
  """

  def __init__(self, directory: str, cfg: ModelConfig):
    self.directory, self.cfg = directory, cfg
    self.shapes = {p: tuple(s.shape) for p, s in variable_paths(abstract_variables(cfg)).items()}
    self.sources: dict[str, list[Source]] = collections.defaultdict(list)
    # which (layer[, expert]) cells of each stacked variable are already filled
    covered = {p: np.zeros(s[:2] if "_layers/" in p else (), bool) for p, s in self.shapes.items()}
    names: set[str] = set()
    self.num_bytes = 0
    for name, f in iter_tensors(directory):
      try:
        rule, slots = hf_mapping.slots_for(name, cfg)
      except hf_mapping.MappingError as e:
        raise CheckpointError(f"{f.path}: {e}") from None
      names.add(name)
      self.num_bytes += int(np.prod(f.shape(name), dtype=np.int64)) * f.dtype(name).itemsize
      for part, (path, index) in enumerate(slots):
        if covered[path][index].any():
          raise CheckpointError(f"{f.path}: tensor {name!r} fills {path}{list(index)}, which another "
                                "tensor already fills (per-expert and merged experts mixed?)")
        covered[path][index] = True
        self.sources[path].append(Source(name, f, rule, part, index))
    check_complete(names, cfg)
    self.num_tensors = len(names)
    embed = self.sources["params/embedding"][0]
    self.dtype = embed.file.dtype(embed.name)

  def fill(self, path: str, out: np.ndarray, on_tensor: Callable[[str], None] | None = None,
           region: tuple[slice, ...] = ()) -> np.ndarray:
    """Writes the HF tensors of variable `path` into `out` (cast to `out.dtype`); returns `out`.

    Args:
      out: buffer of the variable's shape, or of `region`'s shape when a region is given.
      on_tensor: called once per HF tensor over all variables (for a tensor split into several
        variables, at its first part).
      region: per-axis slices (step 1) of the variable to fill, e.g. one device's shard; HF
        tensors entirely outside it are not read.
    """
    want = self.shapes[path]
    bounds = [range(*s.indices(n)) for s, n in zip(region + (slice(None),) * (len(want) - len(region)), want)]
    if tuple(out.shape) != tuple(len(b) for b in bounds) or any(b.step != 1 for b in bounds):
      raise ValueError(f"buffer for {path}{list(region)} has shape {out.shape}, expected "
                       f"{tuple(len(b) for b in bounds)}")
    for src in self.sources[path]:
      if any(i not in b for i, b in zip(src.index, bounds)):
        continue
      piece = src.rule.to_jax(src.file.read(src.name), self.cfg)[src.part]
      if tuple(piece.shape) != want[len(src.index):]:
        raise CheckpointError(
            f"{src.file.path}: tensor {src.name!r} has shape {src.file.shape(src.name)}, which does not "
            f"fit {path} (expected {want[len(src.index):]} after conversion, got {tuple(piece.shape)}): "
            "does config.json match the weights?")
      rest = tuple(slice(b.start, b.stop) for b in bounds[len(src.index):])
      out[tuple(i - b.start for i, b in zip(src.index, bounds))] = piece[rest]
      if on_tensor is not None and src.part == 0:
        on_tensor(src.name)
    return out

  def read(self, path: str, dtype: Any = None, region: tuple[slice, ...] = ()) -> np.ndarray:
    """Variable `path` (or its `region`) as a new host array (default dtype: the checkpoint's;
    buffers float32)."""
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(region, self.shapes[path])) \
        + self.shapes[path][len(region):]
    return self.fill(path, np.empty(shape, leaf_dtype(path, dtype or self.dtype)), region=region)

  def progress(self, desc: str, enabled: bool = True):
    """A tqdm bar counting HF tensors (for `fill`'s `on_tensor`)."""
    return tqdm(total=self.num_tensors, desc=desc, unit="tensor", disable=not enabled)


def load_hf_variables(directory: str, cfg: ModelConfig, dtype: Any = None,
                      progress: bool = False) -> dict:
  """Reads a Hugging Face LLaDA2-MoE checkpoint into a host (numpy) variables pytree.

  Args:
    directory: folder with config.json and safetensors (single file, sharded, per-expert or merged).
    cfg: the model config (its `param_dtype` is used unless `dtype` is given).
    dtype: parameter dtype; the `expert_bias` buffer stays float32.
  """
  ckpt = HFCheckpoint(directory, cfg)
  param_dtype = dtype or cfg.param_dtype
  with ckpt.progress("loading tensors", progress) as bar:
    flat = {p: ckpt.fill(p, np.empty(s, leaf_dtype(p, param_dtype)), lambda _: bar.update())
            for p, s in ckpt.shapes.items()}
  return unflatten(flat)
