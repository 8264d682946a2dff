"""Typed LLaDA2-MoE model configuration, read from and written to Hugging Face `config.json`.

`ModelConfig` holds two kinds of fields: the architecture (every field of a Hugging Face `llada2_moe`
config that the model reads) and run-time choices that are not part of a checkpoint (dtypes, remat
policy, MoE kernel, parallelism scheme). It is frozen and hashable, so it can be a static argument of `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from dmax_jax.errors import InputError

DEFAULT_MASK_TOKEN_ID = 156895

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
MOE_IMPLS = ("auto", "ragged", "tiled", "bucketed", "looped", "native")
MATMUL_IMPLS = ("auto", "xla", "native")
ATTENTION_IMPLS = ("auto", "xla", "native")
# expert_parallel: MoE dispatch and LM-head loss in shard_map (tokens to their experts, vocab-parallel
# cross-entropy); gspmd: the earlier layout left to the partitioner, kept as a measured baseline.
PARALLELISMS = ("expert_parallel", "gspmd")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(InputError):
  """A configuration value the model cannot honour; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """LLaDA2-MoE (BailingMoeV2) architecture plus run-time options."""

  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  head_dim: int
  intermediate_size: int
  moe_intermediate_size: int
  num_experts: int
  num_experts_per_tok: int
  n_group: int = 1
  topk_group: int = 1
  num_shared_experts: int = 0
  first_k_dense_replace: int = 0
  routed_scaling_factor: float = 1.0
  norm_topk_prob: bool = True
  partial_rotary_factor: float = 1.0
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  use_qk_norm: bool = True
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  pad_token_id: int | None = None
  eos_token_id: int | None = None
  mask_token_id: int = DEFAULT_MASK_TOKEN_ID
  # Run-time options (not stored in a Hugging Face config).
  param_dtype: str = "float32"
  dtype: str = "float32"
  remat_policy: str = "none"
  moe_impl: str = "auto"
  moe_max_tile_rows: int = 64  # "tiled" MoE kernel: rows per tile at most (smaller when experts get fewer)
  matmul_impl: str = "auto"  # the other weight matmuls: `dmax_jax/layers/linear.py`
  attention_impl: str = "auto"  # attention to a KV cache: `attend` in `dmax_jax/layers/attention.py`
  parallelism: str = "expert_parallel"
  # True: each layer stack is one scan over stacked weights (compile time independent of depth; training).
  # False: layers unrolled over per-layer weights and KV cache, nothing sliced per forward (decoding: on
  # XLA:CPU a scan copies every layer's weights out of the stack at each step).
  scan_layers: bool = True

  def __post_init__(self):
    self.validate()

  # ---- derived sizes -------------------------------------------------------------------------
  @property
  def rotary_dim(self) -> int:
    return int(self.head_dim * self.partial_rotary_factor)

  @property
  def num_dense_layers(self) -> int:
    return min(self.first_k_dense_replace, self.num_hidden_layers)

  @property
  def num_moe_layers(self) -> int:
    return self.num_hidden_layers - self.num_dense_layers

  @property
  def shared_intermediate_size(self) -> int:
    return self.moe_intermediate_size * self.num_shared_experts

  def validate(self) -> None:
    positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "intermediate_size", "moe_intermediate_size",
                "num_experts", "num_experts_per_tok", "n_group", "topk_group", "moe_max_tile_rows")
    for name in positive:
      if int(getattr(self, name)) <= 0:
        raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                        f"num_key_value_heads ({self.num_key_value_heads})")
    if self.num_experts % self.n_group:
      raise ConfigError(f"num_experts ({self.num_experts}) must be divisible by n_group ({self.n_group})")
    if not 1 <= self.topk_group <= self.n_group:
      raise ConfigError(f"topk_group ({self.topk_group}) must be in [1, n_group={self.n_group}]")
    if self.num_experts_per_tok > self.topk_group * (self.num_experts // self.n_group):
      raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts of the "
                        f"topk_group={self.topk_group} kept groups")
    if (self.num_experts // self.n_group) < 2 and self.n_group > 1:
      raise ConfigError("group-limited routing sums the top-2 scores of a group: each of the n_group "
                        f"groups needs >= 2 experts (num_experts={self.num_experts}, n_group={self.n_group})")
    if self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim:
      raise ConfigError(f"head_dim * partial_rotary_factor = {self.rotary_dim} must be even and in "
                        f"(0, head_dim={self.head_dim}]")
    if not 0 <= self.mask_token_id < self.vocab_size:
      raise ConfigError(f"mask_token_id {self.mask_token_id} is outside the vocabulary "
                        f"(vocab_size={self.vocab_size})")
    for name, allowed in (("param_dtype", DTYPES), ("dtype", DTYPES), ("remat_policy", REMAT_POLICIES),
                          ("moe_impl", MOE_IMPLS), ("matmul_impl", MATMUL_IMPLS), ("attention_impl", ATTENTION_IMPLS),
                          ("parallelism", PARALLELISMS)):
      if getattr(self, name) not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")

  def replace(self, **changes: Any) -> "ModelConfig":
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ConfigError(f"unknown ModelConfig field(s): {sorted(unknown)}")
    return dataclasses.replace(self, **changes)

  # ---- Hugging Face config.json -----------------------------------------------------------------
  @classmethod
  def from_hf_dict(cls, hf: dict[str, Any], **runtime: Any) -> "ModelConfig":
    """Builds a config from a parsed Hugging Face `config.json` of model_type `llada2_moe`."""
    model_type = hf.get("model_type")
    if model_type not in ("llada2_moe", "bailing_moe_v2", "bailing_moe"):
      raise ConfigError(f"model_type must be 'llada2_moe', got {model_type!r}")
    _check_supported(hf)
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok")
    missing = [k for k in required if hf.get(k) is None]
    if missing:
      raise ConfigError(f"config.json lacks required field(s) {missing}")
    num_heads = int(hf["num_attention_heads"])
    mask_id = hf.get("mask_token_id")
    kwargs = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=num_heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // num_heads),
        intermediate_size=int(hf["intermediate_size"]),
        moe_intermediate_size=int(hf["moe_intermediate_size"]),
        num_experts=int(hf["num_experts"]),
        num_experts_per_tok=int(hf["num_experts_per_tok"]),
        n_group=int(hf.get("n_group") or 1),
        topk_group=int(hf.get("topk_group") or 1),
        num_shared_experts=int(hf.get("num_shared_experts") or 0),
        first_k_dense_replace=int(hf.get("first_k_dense_replace") or 0),
        routed_scaling_factor=float(hf.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        partial_rotary_factor=float(hf.get("partial_rotary_factor", 1.0)),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        use_qk_norm=bool(hf.get("use_qk_norm", True)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        pad_token_id=_optional_int(hf.get("pad_token_id")),
        eos_token_id=_first_id(hf.get("eos_token_id")),
        mask_token_id=DEFAULT_MASK_TOKEN_ID if mask_id is None else int(mask_id),
    )
    kwargs.update(runtime)
    return cls(**kwargs)

  @classmethod
  def from_json(cls, path: str | os.PathLike, **runtime: Any) -> "ModelConfig":
    """Reads a Hugging Face `config.json` (a file, or a directory holding one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "config.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"no config.json at {path}")
    with open(path) as f:
      try:
        hf = json.load(f)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    return cls.from_hf_dict(hf, **runtime)

  def architecture_dict(self) -> dict[str, Any]:
    """The architecture fields under their Hugging Face names (what `from_hf_dict` reads)."""
    runtime = {"param_dtype", "dtype", "remat_policy", "moe_impl", "moe_max_tile_rows", "matmul_impl",
               "attention_impl", "parallelism", "scan_layers"}
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in runtime}


def _optional_int(v: Any) -> int | None:
  return None if v is None else int(v)


def _first_id(v: Any) -> int | None:
  if isinstance(v, (list, tuple)):
    return int(v[0]) if v else None
  return _optional_int(v)


def _check_supported(hf: dict[str, Any]) -> None:
  """Rejects Hugging Face config values that this implementation does not honour."""
  checks = (
      ("score_function", lambda v: v in (None, "sigmoid"), "only sigmoid router scores are implemented"),
      ("rope_scaling", lambda v: v is None, "RoPE scaling is not implemented; expected null"),
      ("hidden_act", lambda v: v in (None, "silu"), "only the SiLU (SwiGLU) activation is implemented"),
      ("use_qkv_bias", lambda v: not v, "attention biases (use_qkv_bias=true) are not implemented"),
      ("use_bias", lambda v: not v, "linear biases (use_bias=true) are not implemented"),
      ("moe_router_enable_expert_bias", lambda v: v in (None, True),
       "the official LLaDA2 router always adds expert_bias; false is not supported"),
      ("use_rmsnorm", lambda v: v in (None, True), "only RMSNorm is implemented"),
      ("norm_head", lambda v: not v, "norm_head=true is not implemented"),
      ("use_sliding_window", lambda v: not v, "sliding-window attention is not implemented"),
  )
  for field, ok, why in checks:
    if field in hf and not ok(hf[field]):
      raise ConfigError(f"config field {field}={hf[field]!r} is not supported: {why}")
