"""The released 16B configuration, without allocating its weights: sizes, compile, MoE work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import LLADA2_MINI_CONFIG
from dmax_jax import ModelConfig, abstract_variables, flops
from dmax_jax.model import forward

TOKENS = 64


@pytest.fixture(scope="module")
def cfg():
  # XLA's dots and ragged_dot throughout, which the FLOP count reads (the float32 router would go to the CPU kernel)
  return ModelConfig.from_json(LLADA2_MINI_CONFIG, param_dtype="bfloat16", dtype="bfloat16", moe_impl="ragged",
                               matmul_impl="xla")


def test_parameter_counts(cfg):
  abstract = abstract_variables(cfg)
  counted = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]))
  assert counted == flops.parameter_count(cfg)
  assert abs(counted / 1e9 - 16.26) < 0.01
  assert abs(flops.active_parameter_count(cfg) / 1e9 - 1.43) < 0.01
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(abstract["params"]))
  assert abstract["buffers"]["moe_layers"]["layers"]["mlp"]["expert_bias"].dtype == jnp.float32


def test_forward_compiles_and_moe_work_follows_top_k(cfg):
  abstract = abstract_variables(cfg)
  ids = jax.ShapeDtypeStruct((1, TOKENS), jnp.int32)
  fn = lambda v, i: forward(cfg, v, input_ids=i)
  compiled = jax.jit(fn).lower(abstract, ids).compile()
  assert compiled.memory_analysis().argument_size_in_bytes > 32e9  # bf16 weights, never allocated

  total, per_primitive = flops.traced_matmul_flops(fn, abstract, ids)
  expert_flops = per_primitive["ragged_dot_general"]
  active_expert_params = cfg.num_moe_layers * cfg.num_experts_per_tok * 3 * cfg.hidden_size * cfg.moe_intermediate_size
  assert 1.0 <= expert_flops / (2 * active_expert_params * TOKENS) < 1.5
  assert 1.0 <= total / (2 * flops.active_matmul_parameter_count(cfg) * TOKENS) < 1.5
  # Every-token-through-every-expert would be num_experts / top_k = 32x more expert work.
  assert expert_flops < 2 * cfg.num_moe_layers * cfg.num_experts * 3 * cfg.hidden_size * cfg.moe_intermediate_size * TOKENS / 16
