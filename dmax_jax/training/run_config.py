"""Run configuration: a YAML file with `model`, `data`, `train`, `mesh` and `checkpoint` sections -> typed
dataclasses. `--set section.key=value` overrides (values parsed as YAML). Unknown keys and bad values
raise `ConfigError` naming the key. Relative paths are relative to the working directory."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from dmax_jax.config import DTYPES, MOE_IMPLS, PARALLELISMS, REMAT_POLICIES, ConfigError
from dmax_jax.sharding import MESH_AXES
from dmax_jax.training.loss import LOSS_WEIGHTINGS


@dataclasses.dataclass(frozen=True)
class ModelSection:
  """Which weights to start from. Exactly one of `path` (Hugging Face or converted checkpoint dir) and
  `config` (a `config.json`, random init with `init_seed`)."""
  path: str | None = None
  config: str | None = None
  init_seed: int = 0
  param_dtype: str = "float32"
  dtype: str = "float32"  # compute dtype; "bfloat16" keeps float32 params / optimizer state
  remat_policy: str = "none"
  moe_impl: str = "auto"
  parallelism: str = "expert_parallel"  # or "gspmd": the pre-expert-parallel layout (a measured baseline)


@dataclasses.dataclass(frozen=True)
class DataSection:
  """JSONL training data; chat rows need `tokenizer` (a Hugging Face tokenizer dir with a chat template)."""
  train_path: str = ""
  tokenizer: str | None = None
  max_seq_len: int = 2048
  noise_low: float = 0.75
  noise_high: float = 0.75
  eos_loss_tokens: int = 32  # of the trailing EOS padding, this many keep a loss
  default_flag: bool = True  # on-policy flag of rows without a "flag" field
  shuffle: bool = True
  seed: int = 0
  read_threads: int = 4
  prefetch: int = 16
  worker_processes: int = 0


@dataclasses.dataclass(frozen=True)
class TrainSection:
  """Optimisation recipe. `micro_batch_size` rows per forward (global); gradients are accumulated over
  `global_batch_size // micro_batch_size` micro-batches per optimizer step."""
  output_dir: str = "runs/default"
  learning_rate: float = 2e-6
  epochs: int = 2
  max_steps: int | None = None
  global_batch_size: int = 8
  micro_batch_size: int | None = None
  warmup_ratio: float = 0.03
  schedule: str = "cosine"
  end_lr_ratio: float = 0.0
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float = 1.0
  block_size: int = 32
  on_policy: bool = True  # False: plain masked-diffusion SFT (ablation)
  loss_weighting: str = "tokens"  # or "sequence": the official trainer's mean of per-row means (LOSS_WEIGHTINGS)
  log_every: int = 1
  tensorboard: bool = True
  export_hf: str | None = None  # directory for a Hugging Face safetensors export at the end

  @property
  def micro_batch(self) -> int:
    return self.micro_batch_size or self.global_batch_size

  @property
  def accumulation_steps(self) -> int:
    return self.global_batch_size // self.micro_batch


@dataclasses.dataclass(frozen=True)
class MeshSection:
  """Device mesh axis sizes (one may be -1: all remaining devices)."""
  data: int = 1
  fsdp: int = -1
  expert: int = 1
  tensor: int = 1

  def shape(self) -> dict[str, int]:
    return {a: getattr(self, a) for a in MESH_AXES}


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
  """Orbax checkpoints under `dir` (default `<output_dir>/checkpoints`; a gs:// path works)."""
  dir: str | None = None
  every_steps: int = 500
  keep: int = 3
  async_save: bool = True
  resume: bool = True


@dataclasses.dataclass(frozen=True)
class RunConfig:
  model: ModelSection
  data: DataSection
  train: TrainSection
  mesh: MeshSection
  checkpoint: CheckpointSection

  @property
  def checkpoint_dir(self) -> str:
    path = self.checkpoint.dir or os.path.join(self.train.output_dir, "checkpoints")
    return path if "://" in path else os.path.abspath(path)  # Orbax needs absolute paths

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def dump(self) -> str:
    return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTION_TYPES = {"model": ModelSection, "data": DataSection, "train": TrainSection, "mesh": MeshSection,
                  "checkpoint": CheckpointSection}


def _check_type(key: str, value: Any, annotation: Any) -> Any:
  """Returns `value` coerced to `annotation` (int -> float only), or raises naming `key`."""
  options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
  if value is None:
    if type(None) in options:
      return None
    raise ConfigError(f"{key} must not be null")
  for t in options:
    if t is bool and isinstance(value, bool):
      return value
    if t is int and isinstance(value, int) and not isinstance(value, bool):
      return value
    if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
    if t is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
      try:
        return float(value)
      except ValueError:
        pass
    if t is str and isinstance(value, str):
      return value
  names = " or ".join("null" if t is type(None) else t.__name__ for t in options)
  raise ConfigError(f"{key} must be {names}, got {value!r}")


def _section(name: str, raw: Any):
  cls = SECTION_TYPES[name]
  raw = {} if raw is None else raw
  if not isinstance(raw, dict):
    raise ConfigError(f"section {name!r} must be a mapping, got {raw!r}")
  hints = typing.get_type_hints(cls)
  unknown = sorted(set(raw) - set(hints))
  if unknown:
    raise ConfigError(f"unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                      f"known {name} keys: {sorted(hints)}")
  return cls(**{k: _check_type(f"{name}.{k}", v, hints[k]) for k, v in raw.items()})


def _validate(cfg: RunConfig) -> None:
  m, d, t, c = cfg.model, cfg.data, cfg.train, cfg.checkpoint
  if (m.path is None) == (m.config is None):
    raise ConfigError("set exactly one of model.path (checkpoint) and model.config (random init)")
  for key, value, allowed in (("model.param_dtype", m.param_dtype, DTYPES), ("model.dtype", m.dtype, DTYPES),
                              ("model.remat_policy", m.remat_policy, REMAT_POLICIES),
                              ("model.moe_impl", m.moe_impl, MOE_IMPLS),
                              ("model.parallelism", m.parallelism, PARALLELISMS),
                              ("train.schedule", t.schedule, ("cosine", "linear", "constant")),
                              ("train.loss_weighting", t.loss_weighting, LOSS_WEIGHTINGS)):
    if value not in allowed:
      raise ConfigError(f"{key} must be one of {allowed}, got {value!r}")
  if not d.train_path:
    raise ConfigError("data.train_path is required")
  positive = {"data.max_seq_len": d.max_seq_len, "train.learning_rate": t.learning_rate,
              "train.epochs": t.epochs, "train.global_batch_size": t.global_batch_size,
              "train.micro_batch_size": t.micro_batch, "train.block_size": t.block_size,
              "train.log_every": t.log_every, "checkpoint.every_steps": c.every_steps,
              "checkpoint.keep": c.keep, "data.read_threads": d.read_threads, "data.prefetch": d.prefetch}
  if t.max_steps is not None:
    positive["train.max_steps"] = t.max_steps
  for key, value in positive.items():
    if value <= 0:
      raise ConfigError(f"{key} must be positive, got {value!r}")
  if not 0.0 <= d.noise_low <= d.noise_high <= 1.0:
    raise ConfigError(f"need 0 <= data.noise_low <= data.noise_high <= 1, got {d.noise_low}, {d.noise_high}")
  if d.max_seq_len % t.block_size:
    raise ConfigError(f"data.max_seq_len ({d.max_seq_len}) must be a multiple of train.block_size "
                      f"({t.block_size})")
  if t.global_batch_size % t.micro_batch:
    raise ConfigError(f"train.global_batch_size ({t.global_batch_size}) must be a multiple of "
                      f"train.micro_batch_size ({t.micro_batch})")
  if not 0.0 <= t.warmup_ratio < 1.0:
    raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
  if d.eos_loss_tokens < 0 or d.worker_processes < 0:
    raise ConfigError("data.eos_loss_tokens and data.worker_processes must be >= 0")
  sizes = cfg.mesh.shape()
  if sum(v == -1 for v in sizes.values()) > 1 or any(v == 0 or v < -1 for v in sizes.values()):
    raise ConfigError(f"mesh sizes must be positive with at most one -1, got {sizes}")


def _apply_override(raw: dict, assignment: str) -> None:
  key, sep, text = assignment.partition("=")
  parts = key.strip().split(".")
  if not sep or len(parts) != 2 or not all(parts):
    raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
  section, name = parts
  if section not in SECTION_TYPES:
    raise ConfigError(f"--set {key}: unknown section {section!r}; sections: {sorted(SECTION_TYPES)}")
  raw.setdefault(section, {})
  if raw[section] is None:
    raw[section] = {}
  raw[section][name] = yaml.safe_load(text)


def load_run_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                    raw: dict | None = None) -> RunConfig:
  """Reads a YAML run config (or a `raw` dict), applies `--set` overrides, validates."""
  if raw is None:
    if path is None:
      raise ConfigError("pass a config path or a raw dict")
    with open(path) as f:
      try:
        raw = yaml.safe_load(f) or {}
      except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
      raise ConfigError(f"{path} must hold a mapping of sections")
  raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
  unknown = sorted(set(raw) - set(SECTION_TYPES))
  if unknown:
    raise ConfigError(f"unknown section(s) {unknown}; expected {sorted(SECTION_TYPES)}")
  for assignment in overrides:
    _apply_override(raw, assignment)
  cfg = RunConfig(**{name: _section(name, raw.get(name)) for name in SECTION_TYPES})
  _validate(cfg)
  return cfg
