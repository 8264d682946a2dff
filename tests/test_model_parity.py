"""Forward-pass parity with the official PyTorch model (shared/fixtures/tiny_llada2/expected.npz)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmax_jax import ModelConfig, forward
from dmax_jax.checkpoint.hf_import import load_hf_variables
from dmax_jax.layers import moe_ops
from dmax_jax.model import Transformer, embed_tokens, unstack_layers

LOGIT_ATOL = 1e-4


@pytest.fixture(scope="module")
def expected(fixture_dir):
  return dict(np.load(os.path.join(fixture_dir, "expected.npz")))


@pytest.fixture(scope="module", params=["per_expert", "merged"])
def model(request, fixture_dir):
  path = fixture_dir if request.param == "per_expert" else os.path.join(fixture_dir, "merged")
  cfg = ModelConfig.from_json(path)
  return cfg, load_hf_variables(path, cfg)


@pytest.mark.parametrize("moe_impl, scan_layers, matmul_impl", [
    ("ragged", True, "xla"), ("tiled", True, "xla"), ("bucketed", True, "xla"), ("looped", False, "native"),
    ("native", False, "native")])
@pytest.mark.parametrize("case", ["case1", "case2", "case3"])
def test_token_logits_match_reference(model, expected, case, moe_impl, scan_layers, matmul_impl):
  cfg, variables = model
  cfg = cfg.replace(moe_impl=moe_impl, scan_layers=scan_layers, matmul_impl=matmul_impl)
  if not scan_layers:
    variables = unstack_layers(cfg, variables)
  logits = forward(cfg, variables, input_ids=expected[f"{case}_input_ids"],
                   position_ids=expected[f"{case}_position_ids"],
                   attention_mask=expected.get(f"{case}_attention_keep"))
  np.testing.assert_allclose(np.asarray(logits), expected[f"{case}_logits"], atol=LOGIT_ATOL, rtol=0)


def test_inputs_embeds_logits_match_reference(model, expected):
  cfg, variables = model
  logits = forward(cfg, variables, inputs_embeds=expected["case4_inputs_embeds"],
                   position_ids=expected["case4_position_ids"], attention_mask=expected["case4_attention_keep"])
  np.testing.assert_allclose(np.asarray(logits), expected["case4_logits"], atol=LOGIT_ATOL, rtol=0)


def test_soft_embeddings_built_from_the_table_match_reference(tiny_model, expected):
  cfg, variables = tiny_model
  e_a = embed_tokens(cfg, variables, expected["case4_token_a"])
  e_b = embed_tokens(cfg, variables, expected["case4_token_b"])
  alpha = expected["case4_alpha"][..., None]
  np.testing.assert_allclose(np.asarray(alpha * e_a + (1 - alpha) * e_b), expected["case4_inputs_embeds"],
                             atol=1e-6, rtol=0)


def test_hidden_states_match_reference(tiny_model, expected):
  cfg, variables = tiny_model
  np.testing.assert_allclose(np.asarray(embed_tokens(cfg, variables, expected["case1_input_ids"])),
                             expected["case1_embeddings"], atol=0, rtol=0)
  bias = jnp.zeros((1, 1, 1, 1))
  hidden, _ = Transformer(cfg).apply(variables, embed_tokens(cfg, variables, expected["case1_input_ids"]),
                                     jnp.asarray(expected["case1_position_ids"]), bias, return_hidden=True)
  np.testing.assert_allclose(np.asarray(hidden), expected["case1_final_hidden"], atol=LOGIT_ATOL, rtol=0)


def test_additive_and_boolean_masks_agree(tiny_model, expected):
  cfg, variables = tiny_model
  keep = expected["case2_attention_keep"]
  additive = np.where(keep, 0.0, -np.inf).astype(np.float32)
  kwargs = dict(input_ids=expected["case2_input_ids"], position_ids=expected["case2_position_ids"])
  a = forward(cfg, variables, attention_mask=keep[None], **kwargs)
  b = forward(cfg, variables, attention_mask=additive[None, None], **kwargs)
  np.testing.assert_allclose(np.asarray(a), expected["case2_logits"], atol=LOGIT_ATOL, rtol=0)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("layer", [1, 2])
def test_router_matches_reference(tiny_model, expected, layer):
  cfg, variables = tiny_model
  stack_index = layer - cfg.num_dense_layers
  moe_params = jax.tree.map(lambda x: x[stack_index], variables["params"]["moe_layers"]["layers"]["mlp"])
  bias = variables["buffers"]["moe_layers"]["layers"]["mlp"]["expert_bias"][stack_index]
  x = jnp.asarray(expected[f"case5_layer{layer}_router_input"])
  logits = x @ jnp.asarray(moe_params["router"])
  np.testing.assert_allclose(np.asarray(logits), expected[f"case5_layer{layer}_router_logits"], atol=1e-5, rtol=0)
  ids, weights = moe_ops.route(logits, bias, top_k=cfg.num_experts_per_tok, n_group=cfg.n_group,
                           topk_group=cfg.topk_group, routed_scaling_factor=cfg.routed_scaling_factor,
                           norm_topk_prob=cfg.norm_topk_prob)
  order = np.argsort(np.asarray(ids), axis=-1)
  np.testing.assert_array_equal(np.take_along_axis(np.asarray(ids), order, -1), expected[f"case5_layer{layer}_topk_idx"])
  np.testing.assert_allclose(np.take_along_axis(np.asarray(weights), order, -1),
                             expected[f"case5_layer{layer}_topk_weight"], atol=1e-5, rtol=0)


def test_router_inside_the_model_sees_the_reference_inputs(tiny_model, expected):
  """The router choices the model makes in its own forward (sown intermediates) equal the reference."""
  cfg, variables = tiny_model
  ids = jnp.asarray(expected["case1_input_ids"])
  _, state = Transformer(cfg).apply(variables, embed_tokens(cfg, variables, ids),
                                    jnp.asarray(expected["case1_position_ids"]), jnp.zeros((1, 1, 1, 1)),
                                    mutable=["intermediates"])
  router_logits, expert_ids, _ = state["intermediates"]["moe_layers"]["layers"]["mlp"]["router"][0]
  for i, layer in enumerate(range(cfg.num_dense_layers, cfg.num_hidden_layers)):
    np.testing.assert_allclose(np.asarray(router_logits[i]), expected[f"case5_layer{layer}_router_logits"],
                               atol=1e-4, rtol=0)
    np.testing.assert_array_equal(np.sort(np.asarray(expert_ids[i]), -1), expected[f"case5_layer{layer}_topk_idx"])
