"""The tiny LLaDA2-MoE architecture trained for the tiny-DMax experiment.

Same architecture family as LLaDA2.0-mini (a dense first layer, MoE layers with a shared expert and
group-limited sigmoid routing with expert bias, partial RoPE, QK-norm, untied LM head), scaled down so
that training on two CPU cores takes half an hour: 2.8M parameters, 1.2M active per token.
"""

from __future__ import annotations

import json
import os
from typing import Any

from dmax_jax import flops
from dmax_jax.config import ModelConfig
from dmax_jax.io import write_text_atomic

# Keys of the official config.json that the JAX model does not read but the PyTorch class expects.
_HF_CONSTANTS = {
    "architectures": ["LLaDA2MoeModelLM"],
    "auto_map": {
        "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
        "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
        "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
    },
    "model_type": "llada2_moe",
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "embedding_dropout": 0.0,
    "output_dropout": 0.0,
    "use_qkv_bias": False,
    "use_bias": False,
    "use_rmsnorm": True,
    "norm_head": False,
    "norm_softmax": False,
    "score_function": "sigmoid",
    "moe_router_enable_expert_bias": True,
    "router_dtype": "fp32",
    "use_cache": False,
    "rope_scaling": None,
    "use_sliding_window": False,
    "output_router_logits": False,
    "initializer_range": 0.02,
}


def tiny_model_config(vocab_size: int, eos_token_id: int, mask_token_id: int, pad_token_id: int | None = None, *,
                      hidden_size: int = 192, num_hidden_layers: int = 4, num_experts: int = 16,
                      moe_intermediate_size: int = 64, intermediate_size: int = 512,
                      max_position_embeddings: int = 512, **runtime: Any) -> ModelConfig:
  """The tiny architecture: layer 0 dense (SwiGLU of `intermediate_size`), layers 1.. MoE with
  `num_experts` routed experts in 4 groups (top-2 groups, top-2 experts) plus one shared expert;
  4 query / 2 KV heads of dim hidden/4, RoPE on half of each head, QK-norm.

  `vocab_size` is rounded up to a multiple of 16 (rows past the tokenizer's vocabulary are never fed).
  Ids come from `tokenizer.special_ids`; pad defaults to eos (as in LLaDA2).
  """
  return ModelConfig(
      vocab_size=-(-vocab_size // 16) * 16,
      hidden_size=hidden_size,
      num_hidden_layers=num_hidden_layers,
      num_attention_heads=4,
      num_key_value_heads=2,
      head_dim=hidden_size // 4,
      intermediate_size=intermediate_size,
      moe_intermediate_size=moe_intermediate_size,
      num_experts=num_experts,
      num_experts_per_tok=2,
      n_group=4,
      topk_group=2,
      num_shared_experts=1,
      first_k_dense_replace=1,
      routed_scaling_factor=2.5,
      norm_topk_prob=True,
      partial_rotary_factor=0.5,
      rope_theta=600000.0,
      rms_norm_eps=1e-6,
      use_qk_norm=True,
      tie_word_embeddings=False,
      max_position_embeddings=max_position_embeddings,
      pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
      eos_token_id=eos_token_id,
      mask_token_id=mask_token_id,
      **runtime,
  )


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
  """The Hugging Face `config.json` dict (model_type llada2_moe) of `cfg`; `ModelConfig.from_hf_dict`
  reads it back unchanged."""
  return {
      **_HF_CONSTANTS,
      **cfg.architecture_dict(),
      "rotary_dim": cfg.rotary_dim,
      "moe_shared_expert_intermediate_size": cfg.shared_intermediate_size,
      "max_window_layers": cfg.num_hidden_layers,
      "torch_dtype": cfg.param_dtype,
  }


def write_hf_config(cfg: ModelConfig, directory: str) -> str:
  """Writes `directory/config.json` atomically; returns its path."""
  return write_text_atomic(os.path.join(directory, "config.json"), json.dumps(hf_config(cfg), indent=2) + "\n")


def parameter_summary(cfg: ModelConfig) -> dict[str, int]:
  """Total and per-token active parameter counts (expert_bias buffers excluded)."""
  return {"total": flops.parameter_count(cfg), "active": flops.active_parameter_count(cfg)}
