"""Expert-parallel MoE, vocabulary-parallel head and column-sharded embedding on 8 simulated devices:
the compiled train step moves nothing of size `tokens x top_k x width` or `tokens x vocab`, and it
computes what one device computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import flax.linen as nn
from jax.sharding import PartitionSpec as P

from dmax_jax import ModelConfig, hlo, sharding
from dmax_jax.layers import embedding, moe_ops, vocab_parallel
from dmax_jax.model import init_variables
from dmax_jax.training.run_config import TrainSection
from dmax_jax.training.step import global_batch, init_state, make_train_step

ROWS, SEQ = 8, 32
TRAIN = TrainSection(learning_rate=1e-3, warmup_ratio=0.0, global_batch_size=ROWS, block_size=16)
# vocab >> 8 x hidden and top_k x moe width >> hidden, so the legitimate collectives (hidden states,
# weights) are far below the two sizes the guard forbids.
CONFIG = ModelConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=8, intermediate_size=64, moe_intermediate_size=32,
                     num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, num_shared_experts=1,
                     first_k_dense_replace=1, routed_scaling_factor=2.5, mask_token_id=2047, eos_token_id=2046)
MESH = {"fsdp": 2, "expert": 4}


@pytest.fixture(scope="module")
def variables():
  return nn.unbox(init_variables(CONFIG, jax.random.key(0)))


@pytest.fixture(scope="module")
def host_batch():
  rng = np.random.default_rng(0)
  clean = rng.integers(0, 2040, (ROWS, SEQ)).astype(np.int32)
  masked = rng.random((ROWS, SEQ)) < 0.6
  masked[:, :4] = False  # prompt
  labels = np.where(masked, clean, -100).astype(np.int32)
  return {"noisy_ids": np.where(masked, CONFIG.mask_token_id, clean).astype(np.int32), "clean_ids": clean,
          "labels": labels, "flags": np.arange(ROWS) % 4 != 3}


def lowered_step(cfg, mesh):
  step, _, abstract = make_train_step(cfg, TRAIN, 10, mesh)
  batch = {k: jax.ShapeDtypeStruct((1, ROWS) + (() if k == "flags" else (SEQ,)), jnp.bool_ if k == "flags" else jnp.int32)
           for k in ("noisy_ids", "clean_ids", "labels", "flags")}
  with sharding.use_mesh(mesh, cfg.parallelism):
    return step.lower(abstract, batch)


def oversized(cfg, mesh):
  """Collectives with at least `global tokens x top_k x moe width` or one device's share of the noisy
  half's logits (`rows x L x vocab / devices`) elements."""
  _, text = hlo.hlo_after_partitioning(lowered_step(cfg, mesh), optimize_machine_code=False)
  dispatch = ROWS * 2 * SEQ * cfg.num_experts_per_tok * cfg.moe_intermediate_size
  logits = ROWS * SEQ * cfg.vocab_size // mesh.size
  limit = min(dispatch, logits)
  return [c for c in hlo.parse(text) if c.result_bytes // 2 >= limit]  # bf16 or wider: >= limit elements


def test_no_collective_grows_with_tokens_x_topk_or_tokens_x_vocab():
  mesh = sharding.make_mesh(MESH)
  bf16 = CONFIG.replace(dtype="bfloat16")
  found = oversized(bf16, mesh)
  assert not found, [(c.kind, c.result_bytes, c.op_name) for c in found]
  # The guard sees the problem it guards against: the GSPMD layout moves such buffers.
  assert oversized(bf16.replace(parallelism="gspmd"), mesh)


def run_step(cfg, variables, batch, mesh):
  step, tx, abstract = make_train_step(cfg, TRAIN, 10, mesh)
  with sharding.use_mesh(mesh, cfg.parallelism):
    state = init_state(variables, tx, abstract)
    new_state, metrics = step(state, global_batch(batch, 1, mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.mark.slow  # the default suite checks the expert-parallel step on two meshes in test_train_step.py
def test_expert_parallel_step_equals_single_device(variables, host_batch):
  """The recipe's mesh shape at small scale, top-4 of 16 experts."""
  single = sharding.make_mesh({"fsdp": 1}, jax.devices()[:1])
  ref_state, ref_metrics = run_step(CONFIG, variables, host_batch, single)
  state, metrics = run_step(CONFIG, variables, host_batch, sharding.make_mesh(MESH))
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref_state["params"])):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=0)  # as tests/test_train_step.py


def _on_mesh(fn, mesh_shape, *args):
  mesh = sharding.make_mesh(mesh_shape)
  with sharding.use_mesh(mesh):
    return jax.jit(fn)(*args)


MESHES = ({"fsdp": 2, "expert": 4}, {"data": 2, "tensor": 2, "expert": 2})


@pytest.mark.parametrize("batch, seq_len", [(4, 8), (3, 5)])  # (3, 5): not divisible, replicated rows
def test_vocab_parallel_head_matches_dense_logits(batch, seq_len):
  rng = np.random.default_rng(1)
  hidden = jnp.asarray(rng.normal(size=(batch, seq_len, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(16, 64)), jnp.float32)
  w = w.at[:, 40].set(w[:, 7])  # ties between shards: the lowest id wins, as jnp.argmax
  targets = jnp.asarray(rng.integers(0, 64, (batch, seq_len)), jnp.int32)

  def dense_ce(h):
    logits = h @ w
    return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]

  for mesh_shape in MESHES:
    ce = _on_mesh(vocab_parallel.cross_entropy, mesh_shape, hidden, w, targets)
    np.testing.assert_allclose(ce, dense_ce(hidden), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_on_mesh(vocab_parallel.argmax, mesh_shape, hidden, w),
                                  jnp.argmax(hidden @ w, -1))
    grad = _on_mesh(jax.grad(lambda h: jnp.sum(vocab_parallel.cross_entropy(h, w, targets) * targets)),
                    mesh_shape, hidden)
    np.testing.assert_allclose(grad, jax.grad(lambda h: jnp.sum(dense_ce(h) * targets))(hidden), rtol=1e-5, atol=1e-5)


# (2, 3): rows over fsdp, positions not over expert, so the column blocks arrive out of the table's order.
@pytest.mark.parametrize("batch, seq_len", [(4, 8), (3, 7), (2, 3)])
def test_embedding_lookup_matches_take(batch, seq_len):
  rng = np.random.default_rng(2)
  table = jnp.asarray(rng.normal(size=(50, 16)), jnp.float32)
  ids = jnp.asarray(rng.integers(0, 50, (batch, seq_len)), jnp.int32)
  for mesh_shape in MESHES:
    np.testing.assert_array_equal(_on_mesh(embedding.lookup, mesh_shape, table, ids), table[ids])
    grad = _on_mesh(jax.grad(lambda t: jnp.sum(embedding.lookup(t, ids) ** 2)), mesh_shape, table)
    np.testing.assert_allclose(grad, jax.grad(lambda t: jnp.sum(t[ids] ** 2))(table), rtol=1e-6)


@pytest.mark.parametrize("impl", ["ragged", "tiled", "native"])
def test_expert_parallel_moe_matches_dispatch(impl):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(4, 8, 16)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(4, 8, 8)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(8,)) * 0.1, jnp.float32)
  experts = moe_ops.ExpertWeights(*(jnp.asarray(rng.normal(size=s), jnp.float32) * 0.3
                                for s in ((8, 16, 32), (8, 16, 32), (8, 32, 16))))
  route = lambda lg, b: moe_ops.route(lg, b, top_k=3, n_group=4, topk_group=2, routed_scaling_factor=2.0,
                                  norm_topk_prob=True)
  ids, weights = route(logits.reshape(32, 8), bias)
  want = moe_ops.dispatch_experts(x.reshape(32, 16), ids, weights, experts, impl="ragged").reshape(4, 8, 16)
  cases = ((MESHES[0], P("fsdp", "expert"), ("expert", "fsdp"), ()),
           (MESHES[1], P("data", "expert"), ("expert",), ("tensor",)),
           ({"expert": 8}, P(None, None), ("expert",), ()))  # tokens replicated over the experts' axis
  for mesh_shape, token_spec, expert_axes, mlp_axes in cases:
    fn = lambda x, lg, b, *w: moe_ops.expert_parallel_moe(
        x, lg, b, moe_ops.ExpertWeights(*w), route_fn=route, token_spec=P(*token_spec, None),
        expert_axes=expert_axes, mlp_axes=mlp_axes, impl=impl)
    out, got_ids, got_weights = _on_mesh(fn, mesh_shape, x, logits, bias, *experts)
    np.testing.assert_array_equal(got_ids.reshape(32, 3), ids)
    np.testing.assert_allclose(got_weights.reshape(32, 3), weights, rtol=1e-6)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5, err_msg=f"{impl} {mesh_shape}")
