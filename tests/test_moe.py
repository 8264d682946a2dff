"""The dropless MoE kernels agree with each other and with a per-token reference loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dmax_jax.layers import moe_ops


def _reference(x, ids, weights, w: moe_ops.ExpertWeights):
  """Per token, per selected expert, in numpy."""
  x, ids, weights = map(np.asarray, (x, ids, weights))
  gate, up, down = (np.asarray(a, np.float64) for a in w)
  out = np.zeros(x.shape, np.float64)
  for t in range(x.shape[0]):
    for e, wt in zip(ids[t], weights[t]):
      g, u = x[t] @ gate[e], x[t] @ up[e]
      out[t] += wt * ((g / (1 + np.exp(-g))) * u) @ down[e]
  return out


@pytest.mark.parametrize("impl", ["ragged", "tiled", "bucketed", "looped", "native"])
@pytest.mark.parametrize("tokens,experts,top_k,max_tile,skew", [
    (5, 8, 2, 64, 3.0), (37, 16, 4, 8, 3.0), (64, 4, 1, 16, 3.0),
    (40, 16, 2, 8, 60.0),  # every token picks experts 14 and 15: overflow tiles, several tiles per expert
])
def test_dispatch_matches_per_token_reference(impl, tokens, experts, top_k, max_tile, skew):
  x, ids, weights, w = _problem(tokens, experts, top_k, skew, d=16, f=48)  # the native kernel takes multiples of 16
  if skew > 10:
    assert tokens > moe_ops.bucket_size_for(tokens * top_k, experts)  # more rows than one bucket holds
  got = jax.jit(functools.partial(moe_ops.dispatch_experts, impl=impl, max_tile=max_tile))(x, ids, weights, w)
  np.testing.assert_allclose(np.asarray(got), _reference(x, ids, weights, w), atol=2e-5, rtol=1e-5)


def _problem(tokens, experts, top_k, skew, d, f):
  """Tokens, skewed expert choices (some experts get many rows, some none), their weights, expert weights."""
  kx, kw, ks, kl = jax.random.split(jax.random.key(tokens), 4)
  x = jax.random.normal(kx, (tokens, d))
  w = moe_ops.ExpertWeights(*(jax.random.normal(k, s) / np.sqrt(s[1]) for k, s in
                          zip(jax.random.split(kw, 3), [(experts, d, f), (experts, d, f), (experts, f, d)])))
  logits = jax.random.normal(kl, (tokens, experts)) + jnp.linspace(0, skew, experts)[None, :]
  _, ids = jax.lax.top_k(logits, top_k)
  return x, ids, jax.random.uniform(ks, (tokens, top_k)), w


def test_native_kernel_over_mixed_column_panels():
  """Widths that mix 64- and 16-column panels in every matrix, rows that leave partial 4-row tiles."""
  x, ids, weights, w = _problem(37, 16, 4, 3.0, d=128, f=208)
  got = jax.jit(functools.partial(moe_ops.dispatch_experts, impl="native"))(x, ids, weights, w)
  np.testing.assert_allclose(np.asarray(got), _reference(x, ids, weights, w), atol=2e-5, rtol=1e-5)


def test_group_limited_routing_respects_groups():
  """Selected experts come only from the `topk_group` groups with the best top-2 sums."""
  key = jax.random.key(0)
  logits = jax.random.normal(key, (50, 16)) * 3
  bias = jnp.linspace(-0.2, 0.2, 16)
  ids, weights = moe_ops.route(logits, bias, top_k=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                           norm_topk_prob=True)
  biased = np.asarray(jax.nn.sigmoid(logits) + bias[None, :]).reshape(50, 4, 4)
  group_scores = np.sort(biased, -1)[..., -2:].sum(-1)
  best_groups = np.argsort(-group_scores, -1)[:, :2]
  for t in range(50):
    allowed = biased[t].copy()
    allowed[[g for g in range(4) if g not in best_groups[t]]] = -np.inf
    assert set(np.asarray(ids[t]) // 4) <= set(best_groups[t])
    assert set(np.asarray(ids[t])) == set(np.argsort(-allowed.reshape(-1))[:3])
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 2.5, rtol=1e-6)


def test_tiled_moe_work_is_proportional_to_top_k():
  """The tiled kernel's matmul rows grow with tokens * top_k, not tokens * experts."""
  from dmax_jax.flops import traced_matmul_flops
  tokens, experts, d, f = 512, 64, 8, 8
  w = moe_ops.ExpertWeights(jnp.zeros((experts, d, f)), jnp.zeros((experts, d, f)), jnp.zeros((experts, f, d)))
  x = jnp.zeros((tokens, d))
  def run(top_k):
    ids = jnp.zeros((tokens, top_k), jnp.int32)
    return traced_matmul_flops(lambda a: moe_ops.dispatch_experts(a, ids, jnp.ones((tokens, top_k)), w, impl="tiled"), x)[0]
  dense_flops = 3 * 2 * tokens * experts * d * f
  assert run(2) < 0.25 * dense_flops
  assert run(4) > 1.5 * run(2)


def _dense_dispatch(x, ids, weights, w: moe_ops.ExpertWeights):
  """Differentiable per-(token, slot) reference: each slot multiplies by its expert's gathered weights."""
  gate = jnp.einsum("td,tkdf->tkf", x, w.gate[ids])
  up = jnp.einsum("td,tkdf->tkf", x, w.up[ids])
  out = jnp.einsum("tkf,tkfd->tkd", jax.nn.silu(gate) * up, w.down[ids])
  return jnp.einsum("tkd,tk->td", out, weights)


def test_gradients_match_a_dense_reference():
  """Training works with every kernel: gradients wrt tokens and expert weights equal the dense reference's."""
  kx, kw, kl = jax.random.split(jax.random.key(3), 3)
  tokens, experts, top_k, d, f = 24, 8, 2, 16, 32
  x = jax.random.normal(kx, (tokens, d))
  w = moe_ops.ExpertWeights(*(jax.random.normal(k, s) / np.sqrt(s[1]) for k, s in
                          zip(jax.random.split(kw, 3), [(experts, d, f), (experts, d, f), (experts, f, d)])))
  _, ids = jax.lax.top_k(jax.random.normal(kl, (tokens, experts)) + jnp.linspace(0, 60, experts)[None, :], top_k)
  weights = jnp.full((tokens, top_k), 0.5)
  grad = lambda fn: jax.jit(jax.grad(lambda a, ew: jnp.sum(jnp.sin(fn(a, ids, weights, ew))), argnums=(0, 1)))(x, w)
  want = jax.tree.leaves(grad(_dense_dispatch))
  for impl in ("ragged", "tiled", "bucketed", "looped", "native"):
    got = jax.tree.leaves(grad(lambda *a, impl=impl: moe_ops.dispatch_experts(*a, impl=impl)))
    for g, ref in zip(got, want):
      np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5, rtol=1e-5, err_msg=impl)


def test_auto_picks_the_native_kernel_for_float32_decode_shapes_on_cpu():
  w = moe_ops.ExpertWeights(jnp.zeros((64, 32, 16)), jnp.zeros((64, 32, 16)), jnp.zeros((64, 16, 32)))
  decode_rows, training_rows = jnp.zeros((256, 32)), jnp.zeros((64 * 65, 32))
  assert moe_ops.resolve_impl("auto", decode_rows, w) == "native"
  assert moe_ops.resolve_impl("auto", decode_rows.astype(jnp.bfloat16), w) == "looped"
  assert moe_ops.resolve_impl("auto", training_rows, w) == "tiled"
  odd = moe_ops.ExpertWeights(jnp.zeros((64, 32, 20)), jnp.zeros((64, 32, 20)), jnp.zeros((64, 20, 32)))
  assert moe_ops.resolve_impl("auto", decode_rows, odd) == "looped"


def test_native_kernel_unbuildable_falls_back_with_a_warning(tmp_path, monkeypatch):
  from dmax_jax.layers import cpu_kernels
  monkeypatch.setenv("DMAX_JAX_KERNEL_CACHE", str(tmp_path))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  cpu_kernels.available.cache_clear()
  try:
    with pytest.warns(UserWarning, match="CPU kernels are unavailable"):
      assert not cpu_kernels.available()
    w = moe_ops.ExpertWeights(jnp.zeros((8, 16, 16)), jnp.zeros((8, 16, 16)), jnp.zeros((8, 16, 16)))
    assert moe_ops.resolve_impl("auto", jnp.zeros((16, 16)), w) == "looped"
  finally:
    cpu_kernels.available.cache_clear()


def test_native_kernel_rejects_mismatched_weights():
  from dmax_jax.layers import cpu_kernels
  x, ids, weights = jnp.zeros((4, 16)), jnp.zeros((4, 2), jnp.int32), jnp.ones((4, 2))
  gate = up = jnp.zeros((2, 16, 32))
  with pytest.raises(Exception, match="down"):
    down = jnp.zeros((2, 16, 32))  # must be [2, 32, 16]
    jax.block_until_ready(cpu_kernels.routed_experts(x, ids, weights, gate, up, down))
  with pytest.raises(ValueError, match="multiples of 16"):
    odd = jnp.zeros((2, 12, 32))
    cpu_kernels.routed_experts(jnp.zeros((4, 12)), ids, weights, odd, odd, jnp.zeros((2, 32, 12)))


def test_native_kernel_skips_ids_outside_its_experts():
  """Expert parallelism hands each device's kernel the other devices' assignments as id E_l (and nothing reads
  ids below 0): they add nothing."""
  from dmax_jax.layers import cpu_kernels
  x, ids, weights, w = _problem(21, 8, 3, 3.0, d=16, f=32)
  outside = jnp.where(jnp.arange(21)[:, None] % 3 == jnp.arange(3)[None, :], 8, ids).at[0, 0].set(-1)
  kept = (outside >= 0) & (outside < 8)
  got = cpu_kernels.routed_experts(x, outside, weights, *w)
  want = _reference(x, jnp.where(kept, outside, 0), jnp.where(kept, weights, 0.0), w)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
