"""The library never relies on implicit rank promotion: the model forward, both decoders, the OPUT loss and its
gradient, and every MoE kernel run under `jax_numpy_rank_promotion="raise"` (tests themselves may broadcast)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmax_jax
from dmax_jax.decoding import DecodeOptions, generate
from dmax_jax.config import MOE_IMPLS
from dmax_jax.layers import moe_ops


@pytest.fixture(autouse=True)
def raise_on_rank_promotion():
  with jax.numpy_rank_promotion("raise"):
    yield


def test_forward_and_oput_loss_gradient(tiny_model):
  cfg, variables = tiny_model
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size - 2, (2, 16)), jnp.int32)
  assert dmax_jax.forward(cfg, variables, input_ids=ids).shape == (2, 16, cfg.vocab_size)
  noisy = ids.at[:, 8:].set(cfg.mask_token_id)
  labels = ids.at[:, :8].set(-100)
  loss = lambda v, w: dmax_jax.oput_loss(cfg, v, noisy, ids, labels, jnp.array([True, False]), 8, weighting=w)
  both = lambda v: loss(v, "tokens") + loss(v, "sequence")  # one compile covers both weightings
  assert jnp.isfinite(jax.jit(jax.grad(both))(variables)["params"]["embedding"]).all()


@pytest.mark.parametrize("mode", ["spd", pytest.param("threshold", marks=pytest.mark.slow)])
def test_decoders(tiny_model, mode):
  cfg, variables = tiny_model
  rows = generate(cfg, variables, [[207, 226, 139, 65, 149], [3, 4]],
                  DecodeOptions(mode=mode, block_length=8, gen_length=16, temperature=0.5, trace=True))
  assert all(r.nfe > 0 for r in rows)


@pytest.mark.parametrize("impl", [i for i in MOE_IMPLS if i != "auto"])
def test_moe_kernels(impl):
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k1, (6, 16))  # widths multiples of 16, as the native kernel needs
  w = moe_ops.ExpertWeights(*(jax.random.normal(k, s) for k, s in zip(jax.random.split(k2, 3),
                                                                   [(8, 16, 32), (8, 16, 32), (8, 32, 16)])))
  ids, weights = moe_ops.route(jax.random.normal(k3, (6, 8)), jnp.zeros((8,)), top_k=2, n_group=4, topk_group=2,
                           routed_scaling_factor=1.0, norm_topk_prob=True)
  out = jax.grad(lambda x: moe_ops.dispatch_experts(x, ids, weights, w, impl=impl).sum())(x)
  assert out.shape == x.shape
