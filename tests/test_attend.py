"""`attend` against a plain numpy softmax attention, including a cache prefix cut to the keys its queries see,
and the CPU kernel for attention to a cache (`impl="native"`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmax_jax import sharding
from dmax_jax.layers import cpu_kernels
from dmax_jax.layers.attention import attend, mask_to_bias, prefix_sizes, resolve_impl

BATCH, QUERIES, HEADS, KV_HEADS, HEAD_DIM, PREFIX = 2, 4, 4, 2, 8, 600


def _numpy_attention(q, k, v, keep):
  """q `[b, t, n, d]`, k/v `[b, kv, s, d]` (all keys), keep `[b, t, s]`."""
  k = np.repeat(k, q.shape[2] // k.shape[1], axis=1)
  v = np.repeat(v, q.shape[2] // v.shape[1], axis=1)
  scores = np.einsum("btnd,bnsd->bnts", q, k) / np.sqrt(q.shape[-1])
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


# The CPU kernel's shapes: query counts and head dims multiples of 16; 3 query heads per kv head.
NATIVE_QUERIES, NATIVE_HEADS, NATIVE_DIM, NATIVE_PREFIX = 16, 6, 32, 300


def _cache_inputs(rng, filled, queries=NATIVE_QUERIES, heads=NATIVE_HEADS, head_dim=NATIVE_DIM,
                  prefix=NATIVE_PREFIX):
  """q, own k/v, cached k/v and the keep mask of `len(filled)` rows whose queries see `filled[row]` cached keys
  and the own keys causally."""
  batch = len(filled)
  q = rng.standard_normal((batch, queries, heads, head_dim)).astype(np.float32)
  k, v = (rng.standard_normal((batch, KV_HEADS, queries, head_dim)).astype(np.float32) for _ in range(2))
  prefix_k, prefix_v = (rng.standard_normal((batch, KV_HEADS, prefix, head_dim)).astype(np.float32)
                        for _ in range(2))
  keep = np.zeros((batch, queries, prefix + queries), bool)
  for row, n in enumerate(filled):
    keep[row, :, :n] = True
  keep[:, :, prefix:] = np.tril(np.ones((queries, queries), bool))
  return q, k, v, prefix_k, prefix_v, keep


@pytest.mark.parametrize("filled", [(0, 0), (40, 250), (100, 300), (513, 20), (600, 600)])
def test_cache_prefix_cut_equals_whole_softmax(filled):
  q, k, v, prefix_k, prefix_v, keep = _cache_inputs(np.random.default_rng(sum(filled)), filled, QUERIES, HEADS,
                                                    HEAD_DIM, PREFIX)
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


@pytest.mark.parametrize("filled", [(0,), (300,), (7, 300, 129), (1, 64)])
def test_native_cache_attention_matches_numpy(filled):
  rng = np.random.default_rng(len(filled) + sum(filled))
  q, k, v, prefix_k, prefix_v, keep = _cache_inputs(rng, filled)
  bias = mask_to_bias(keep[:, None], len(filled), NATIVE_QUERIES, NATIVE_PREFIX + NATIVE_QUERIES)
  assert resolve_impl("native", q, k, v, (prefix_k, prefix_v)) == "native"
  got = jax.jit(lambda *a: attend(*a, impl="native"))(q, k, v, bias, (prefix_k, prefix_v))
  want = _numpy_attention(q, np.concatenate([prefix_k, k], 2), np.concatenate([prefix_v, v], 2), keep)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_native_cache_attention_reads_no_key_past_the_last_one_seen():
  rng = np.random.default_rng(3)
  filled = (40, 200)
  q, k, v, prefix_k, prefix_v, keep = _cache_inputs(rng, filled)
  for row, n in enumerate(filled):  # stale cache past what each row's queries see
    prefix_k[row, :, n:] = np.nan
    prefix_v[row, :, n:] = np.nan
  bias = mask_to_bias(keep[:, None], 2, NATIVE_QUERIES, NATIVE_PREFIX + NATIVE_QUERIES)
  got = np.asarray(attend(q, k, v, bias, (prefix_k, prefix_v), impl="native"))
  keys = [np.concatenate([prefix_k[r:r + 1, :, :n], k[r:r + 1]], 2) for r, n in enumerate(filled)]
  values = [np.concatenate([prefix_v[r:r + 1, :, :n], v[r:r + 1]], 2) for r, n in enumerate(filled)]
  for row, n in enumerate(filled):
    seen = np.concatenate([keep[row:row + 1, :, :n], keep[row:row + 1, :, NATIVE_PREFIX:]], -1)
    want = _numpy_attention(q[row:row + 1], keys[row], values[row], seen)
    np.testing.assert_allclose(got[row:row + 1], want, rtol=1e-5, atol=1e-5)


def test_native_cache_attention_takes_a_bias_shared_by_the_batch():
  rng = np.random.default_rng(4)
  q, k, v, prefix_k, prefix_v, keep = _cache_inputs(rng, (90, 90))
  bias = mask_to_bias(keep[0], 2, NATIVE_QUERIES, NATIVE_PREFIX + NATIVE_QUERIES)  # [1, 1, T, S]
  assert bias.shape[0] == 1
  got = attend(q, k, v, bias, (prefix_k, prefix_v), impl="native")
  want = attend(q, k, v, bias, (prefix_k, prefix_v), impl="xla")
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_gradient_of_native_cache_attention_equals_xla():
  rng = np.random.default_rng(5)
  q, k, v, prefix_k, prefix_v, keep = _cache_inputs(rng, (10, 250), prefix=48 * 8)
  bias = mask_to_bias(keep[:, None], 2, NATIVE_QUERIES, 48 * 8 + NATIVE_QUERIES)
  loss = lambda impl: lambda *a: jnp.sum(jnp.sin(attend(*a[:4], a[4:], impl=impl)))
  got = jax.jit(jax.grad(loss("native"), argnums=range(6)))(q, k, v, bias, prefix_k, prefix_v)
  want = jax.jit(jax.grad(loss("xla"), argnums=range(6)))(q, k, v, bias, prefix_k, prefix_v)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_auto_picks_the_kernel_for_float32_cache_attention_on_cpu_outside_meshes(monkeypatch):
  q, k, v, prefix_k, prefix_v, _ = _cache_inputs(np.random.default_rng(6), (1,))
  prefix = (prefix_k, prefix_v)
  assert resolve_impl("auto", q, k, v, prefix) == "native"
  assert resolve_impl("auto", q, k, v, None) == "xla"  # no cache: training, prefill
  assert resolve_impl("xla", q, k, v, prefix) == "xla"
  assert resolve_impl("native", q[:, :8], k[:, :, :8], v[:, :, :8], prefix) == "xla"  # 8 queries
  narrow = [a[..., :24] for a in (q, k, v, prefix_k, prefix_v)]  # head dim 24
  assert resolve_impl("native", *narrow[:3], tuple(narrow[3:])) == "xla"
  assert resolve_impl("auto", q.astype(jnp.bfloat16), k, v, prefix) == "xla"
  with sharding.use_mesh(sharding.make_mesh({"data": 2}, jax.devices()[:2])):
    assert resolve_impl("auto", q, k, v, prefix) == "xla"
  monkeypatch.setattr(cpu_kernels, "available", lambda: False)
  assert resolve_impl("auto", q, k, v, prefix) == "xla"


def test_attention_kernel_rejects_bad_shapes():
  q, k, v, prefix_k, prefix_v, _ = _cache_inputs(np.random.default_rng(7), (1,))
  bias_t = np.zeros((1, NATIVE_PREFIX + 8, 8), np.float32)
  with pytest.raises(ValueError, match="multiples of 16"):
    cpu_kernels.attention(q[:, :8], prefix_k, prefix_v, k[:, :, :8], v[:, :, :8], bias_t, np.zeros(1, np.int32))
