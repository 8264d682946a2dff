"""Reading Hugging Face configs: every field, clear errors for what the model cannot honour."""

import json

import pytest

from conftest import LLADA2_MINI_CONFIG
from dmax_jax import ConfigError, ModelConfig


@pytest.fixture()
def hf_config(fixture_dir):
  with open(f"{fixture_dir}/config.json") as f:
    return json.load(f)


def test_reads_every_architecture_field(hf_config):
  cfg = ModelConfig.from_hf_dict(hf_config)
  for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
                "n_group", "topk_group", "num_shared_experts", "first_k_dense_replace", "routed_scaling_factor",
                "partial_rotary_factor", "rope_theta", "rms_norm_eps", "tie_word_embeddings", "pad_token_id",
                "eos_token_id", "mask_token_id", "norm_topk_prob"):
    assert getattr(cfg, field) == hf_config[field], field
  assert cfg.rotary_dim == hf_config["rotary_dim"]
  assert (cfg.num_dense_layers, cfg.num_moe_layers) == (1, 2)


def test_mask_id_defaults_to_llada2(hf_config):
  del hf_config["mask_token_id"]
  hf_config["vocab_size"] = 157184
  assert ModelConfig.from_hf_dict(hf_config).mask_token_id == 156895


def test_released_16b_config():
  cfg = ModelConfig.from_json(LLADA2_MINI_CONFIG)
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (20, 2048, 16, 4)
  assert (cfg.num_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group) == (256, 8, 8, 4)
  assert (cfg.moe_intermediate_size, cfg.intermediate_size, cfg.num_shared_experts) == (512, 5120, 1)
  assert (cfg.vocab_size, cfg.routed_scaling_factor, cfg.rotary_dim, cfg.rope_theta) == (157184, 2.5, 64, 600000)


@pytest.mark.parametrize("field,value", [
    ("score_function", "softmax"),
    ("rope_scaling", {"type": "yarn", "factor": 4.0}),
    ("use_qkv_bias", True),
    ("hidden_act", "gelu"),
    ("model_type", "llama"),
    ("n_group", 3),
    ("topk_group", 9),
    ("num_key_value_heads", 3),
    ("mask_token_id", 100000),
])
def test_unsupported_values_fail_naming_the_field(hf_config, field, value):
  hf_config[field] = value
  with pytest.raises(ConfigError, match=field):
    ModelConfig.from_hf_dict(hf_config)


def test_missing_required_field_is_named(hf_config):
  del hf_config["num_experts"]
  with pytest.raises(ConfigError, match="num_experts"):
    ModelConfig.from_hf_dict(hf_config)


def test_runtime_options_are_validated(hf_config):
  with pytest.raises(ConfigError, match="remat_policy"):
    ModelConfig.from_hf_dict(hf_config, remat_policy="sometimes")
  with pytest.raises(ConfigError, match="unknown ModelConfig field"):
    ModelConfig.from_hf_dict(hf_config).replace(moe_kernel="ragged")
