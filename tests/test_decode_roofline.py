"""LLaDA2.0-mini (16B) decoding without weights: the SPD block step AOT-compiles (single device and
sharded), and the hand-derived per-forward cost agrees with the traced program and with simulation."""

import functools
import importlib.util
import os

import jax
import numpy as np
import pytest

from conftest import LLADA2_MINI_CONFIG, REPO_ROOT
from dmax_jax import ModelConfig, abstract_variables, flops, sharding
from dmax_jax.decoding import DecodeOptions, cost
from dmax_jax.decoding.generate import block_step

_spec = importlib.util.spec_from_file_location("decode_roofline", os.path.join(REPO_ROOT, "benchmarks",
                                                                                "decode_roofline.py"))
roofline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roofline)

CONTEXT = 1024


@pytest.fixture(scope="module")
def cfg():
  return ModelConfig.from_json(LLADA2_MINI_CONFIG, param_dtype="bfloat16", dtype="bfloat16", moe_impl="ragged")


def test_block_step_aot_compiles_single_device_and_sharded(cfg):
  compiled, _ = roofline.compile_block_step(cfg, 1, 32, CONTEXT)
  weights = 2 * flops.parameter_count(cfg)
  assert compiled.memory_analysis().argument_size_in_bytes > weights  # bf16 weights + cache, never allocated
  mesh = sharding.make_mesh({"expert": 4, "tensor": 2})
  sharded, _ = roofline.compile_block_step(cfg, 1, 32, CONTEXT, mesh)
  per_device = sharded.memory_analysis().argument_size_in_bytes
  assert per_device < weights / 5 and per_device < 16e9  # fits one 16 GB v5e chip's HBM


def test_hand_flops_match_traced_block_step(cfg):
  args = roofline.block_step_args(cfg, 1, 32, CONTEXT)
  traced, _ = flops.traced_matmul_flops(functools.partial(block_step, cfg, DecodeOptions(block_length=32)), *args)
  hand = cost.forward_cost(cfg, 1, 32, CONTEXT).flops
  assert abs(traced / hand - 1) < 0.02


def test_expected_distinct_experts_matches_uniform_routing_simulation(cfg):
  rng = np.random.default_rng(0)
  picks = np.argsort(rng.random((2000, 32, cfg.num_experts)), axis=-1)[..., :cfg.num_experts_per_tok]
  distinct = np.mean([len(np.unique(p)) for p in picks])
  assert abs(distinct - cost.expected_distinct_experts(cfg, 32)) < 1.0


def test_weight_bytes_reach_all_non_embedding_weights_when_every_expert_is_used(cfg):
  leaves = jax.tree.leaves(abstract_variables(cfg)["params"])
  all_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)
  embedding = cfg.vocab_size * cfg.hidden_size * 2
  big = cost.forward_cost(cfg, 64, 32, CONTEXT)
  assert big.distinct_experts == pytest.approx(cfg.num_experts)
  assert big.weight_bytes == pytest.approx(all_bytes - embedding, rel=1e-6)
  one = cost.forward_cost(cfg, 1, 32, CONTEXT)
  assert 0.5 < one.weight_bytes / big.weight_bytes < 0.8  # a 32-token block touches ~64% of the experts


def test_measured_distinct_experts_set_the_expert_bytes(cfg):
  """A measured count of touched experts replaces the uniform expectation; every expert touched reads all weights."""
  every = cost.forward_cost(cfg, 1, 32, CONTEXT, distinct_experts=cfg.num_experts)
  assert every.weight_bytes == pytest.approx(cost.forward_cost(cfg, 64, 32, CONTEXT).weight_bytes, rel=1e-9)
  none = cost.forward_cost(cfg, 1, 32, CONTEXT, distinct_experts=0)
  expert_bytes = 2 * cfg.num_moe_layers * cfg.num_experts * cost.expert_params(cfg)
  assert every.weight_bytes - none.weight_bytes == pytest.approx(expert_bytes, rel=1e-9)
  assert none.flops == every.flops  # routing changes what is read, not what is computed
