"""The resolved config a run was started with (`<output_dir>/run_config.yaml`), and the check that a
resumed run continues the same run: same objective, model, data and data order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

from dmax_jax.config import ConfigError
from dmax_jax.io import write_text_atomic
from dmax_jax.training.run_config import SECTION_TYPES, RunConfig

FILE = "run_config.yaml"
# Keys that change neither the objective nor the data order. How the run executes (mesh, kernels,
# data-loading threads, where checkpoints go) may change freely: a preempted job restarts on another
# slice. What it produces (length, logging, checkpoint cadence) may change with --allow-config-change.
FREE_KEYS = frozenset({
    "mesh.data", "mesh.fsdp", "mesh.expert", "mesh.tensor", "model.remat_policy", "model.moe_impl",
    "model.parallelism", "data.read_threads", "data.prefetch", "data.worker_processes", "checkpoint.dir",
    "checkpoint.async_save", "train.output_dir",
})
SAFE_KEYS = frozenset({
    "train.max_steps", "train.log_every", "train.tensorboard", "train.export_hf", "checkpoint.every_steps",
    "checkpoint.keep", "checkpoint.resume",
})


def _flatten(cfg: dict[str, Any]) -> dict[str, Any]:
  return {f"{section}.{key}": value for section, values in cfg.items() for key, value in values.items()}


def _defaults() -> dict[str, Any]:
  """Every key's default: a run recorded before a key existed ran with its default."""
  return {f"{name}.{f.name}": f.default for name, cls in SECTION_TYPES.items() for f in dataclasses.fields(cls)
          if f.default is not dataclasses.MISSING}


def check_resume(cfg: RunConfig, allow_config_change: bool) -> None:
  """Raises `ConfigError` naming the keys in which `cfg` differs from the run in its output dir."""
  path = os.path.join(cfg.train.output_dir, FILE)
  if not os.path.exists(path):
    return
  current = _flatten(cfg.to_dict())
  with open(path) as f:
    stored = _flatten(yaml.safe_load(f))
  stored = {**{k: v for k, v in _defaults().items() if k in current}, **stored}
  changed = sorted(k for k in stored.keys() | current.keys()
                   if stored.get(k) != current.get(k) and k not in FREE_KEYS)
  unsafe = [k for k in changed if k not in SAFE_KEYS]
  describe = lambda keys: ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys)
  if unsafe:
    raise ConfigError(f"{cfg.train.output_dir} holds a run with another objective or data ({describe(unsafe)}); "
                      "resuming would mix two runs: use a new train.output_dir")
  if changed and not allow_config_change:
    raise ConfigError(f"the config differs from the run in {cfg.train.output_dir} ({describe(changed)}); "
                      "pass --allow-config-change to resume with it")


def record(cfg: RunConfig) -> None:
  write_text_atomic(os.path.join(cfg.train.output_dir, FILE), cfg.dump())
