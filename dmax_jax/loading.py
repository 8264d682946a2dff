"""`load_model`: a converted (Orbax) or Hugging Face checkpoint directory -> (config, variables)."""

from __future__ import annotations

from typing import Any

import jax
from jax.sharding import Mesh

from dmax_jax.checkpoint import orbax_format
from dmax_jax.checkpoint.hf_import import HFCheckpoint, dtype_name, unflatten, variable_paths
from dmax_jax.config import ModelConfig
from dmax_jax.model import unstack_layers, variable_shardings


def _load_hf(path: str, cfg: ModelConfig, dtype: Any, mesh: Mesh | None) -> tuple[ModelConfig, dict]:
  ckpt = HFCheckpoint(path, cfg)
  cfg = cfg.replace(param_dtype=dtype_name(dtype or ckpt.dtype))
  shardings = variable_paths(variable_shardings(cfg, mesh))
  flat = {}
  for leaf_path, leaf_sharding in shardings.items():
    # each device's shard is read on its own: only HF tensors overlapping it are touched
    flat[leaf_path] = jax.make_array_from_callback(
        ckpt.shapes[leaf_path], leaf_sharding,
        lambda region, p=leaf_path: ckpt.read(p, cfg.param_dtype, region))
  return cfg, unflatten(flat)


def load_model(path: str, dtype: Any = None, mesh: Mesh | None = None,
               compute_dtype: Any = None, **runtime: Any) -> tuple[ModelConfig, dict]:
  """Loads a model checkpoint.

  Args:
    path: a directory converted by `convert_weights.py hf-to-jax` (Orbax), or a Hugging Face
      directory (config.json + `model.safetensors` or sharded with `model.safetensors.index.json`;
      per-expert or merged experts; float32 or bfloat16).
    dtype: parameter dtype (e.g. `jnp.bfloat16` or "float32"); default: the checkpoint's. The
      router's `expert_bias` buffer always stays float32.
    mesh: when given, every variable is created directly with its `NamedSharding` from the logical
      axis rules (`dmax_jax.sharding`); otherwise everything lives on the first device.
    compute_dtype: the matmul dtype (`ModelConfig.dtype`); default float32.
    **runtime: other run-time `ModelConfig` fields (`remat_policy`, `moe_impl`, ...); `scan_layers=False`
      returns per-layer variables (`unstack_layers`), the fast layout for decoding.

  Returns:
    `(config, variables)`, variables = `{"params": ..., "buffers": ...}` of `jax.Array`s, ready for
    `dmax_jax.forward(config, variables, ...)`.
  """
  if compute_dtype is not None:
    runtime["dtype"] = dtype_name(compute_dtype)
  cfg = ModelConfig.from_json(path, **{**runtime, "scan_layers": True})
  if not orbax_format.is_converted(path):
    cfg, variables = _load_hf(path, cfg, dtype, mesh)
  else:
    marker = orbax_format.read_marker(path)
    cfg = cfg.replace(param_dtype=dtype_name(dtype or marker["param_dtype"]))
    variables = orbax_format.restore(path, cfg, variable_shardings(cfg, mesh))
  if runtime.get("scan_layers", True):
    return cfg, variables
  cfg = cfg.replace(scan_layers=False)
  variables = unstack_layers(cfg, variables)
  return cfg, variables if mesh is None else jax.device_put(variables, variable_shardings(cfg, mesh))
