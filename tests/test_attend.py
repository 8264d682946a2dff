"""`attend` against a plain numpy softmax attention, including a cache prefix cut to the keys its queries see."""

import jax
import numpy as np
import pytest

from dmax_jax.layers.attention import attend, mask_to_bias, prefix_sizes

BATCH, QUERIES, HEADS, KV_HEADS, HEAD_DIM, PREFIX = 2, 4, 4, 2, 8, 600


def _numpy_attention(q, k, v, keep):
  """q `[b, t, n, d]`, k/v `[b, kv, s, d]` (all keys), keep `[b, t, s]`."""
  k = np.repeat(k, HEADS // KV_HEADS, axis=1)
  v = np.repeat(v, HEADS // KV_HEADS, axis=1)
  scores = np.einsum("btnd,bnsd->bnts", q, k) / np.sqrt(HEAD_DIM)
  scores = np.where(keep[:, None], scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnts,bnsd->btnd", weights, v)


def test_prefix_sizes():
  assert prefix_sizes(100) == (100,)
  assert prefix_sizes(341) == (341,)  # a cut to 256 would keep 3/4 of it
  assert prefix_sizes(342) == (256, 342)
  assert prefix_sizes(600) == (256, 384, 600)
  assert prefix_sizes(2112) == (256, 384, 640, 1024, 1536, 2112)


@pytest.mark.parametrize("filled", [(0, 0), (40, 250), (100, 300), (513, 20), (600, 600)])
def test_cache_prefix_cut_equals_whole_softmax(filled):
  rng = np.random.default_rng(sum(filled))
  q = rng.standard_normal((BATCH, QUERIES, HEADS, HEAD_DIM)).astype(np.float32)
  k, v = (rng.standard_normal((BATCH, KV_HEADS, QUERIES, HEAD_DIM)).astype(np.float32) for _ in range(2))
  prefix_k, prefix_v = (rng.standard_normal((BATCH, KV_HEADS, PREFIX, HEAD_DIM)).astype(np.float32)
                        for _ in range(2))
  keep = np.zeros((BATCH, QUERIES, PREFIX + QUERIES), bool)
  for row, n in enumerate(filled):
    keep[row, :, :n] = True
  keep[:, :, PREFIX:] = np.tril(np.ones((QUERIES, QUERIES), bool))  # causal among the new keys
  bias = mask_to_bias(keep[:, None], BATCH, QUERIES, PREFIX + QUERIES)
  got = jax.jit(attend)(q, k, v, bias, (prefix_k, prefix_v))
  want = _numpy_attention(q, np.concatenate([prefix_k, k], 2), np.concatenate([prefix_v, v], 2), keep)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_the_cut_is_a_switch_over_prefix_sizes():
  q = np.zeros((1, QUERIES, HEADS, HEAD_DIM), np.float32)
  kv = np.zeros((1, KV_HEADS, QUERIES, HEAD_DIM), np.float32)
  prefix = np.zeros((1, KV_HEADS, PREFIX, HEAD_DIM), np.float32)
  bias = np.zeros((1, 1, QUERIES, PREFIX + QUERIES), np.float32)
  jaxpr = jax.make_jaxpr(attend)(q, kv, kv, bias, (prefix, prefix)).jaxpr
  (switch,) = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "cond"]
  assert len(switch.params["branches"]) == len(prefix_sizes(PREFIX))
