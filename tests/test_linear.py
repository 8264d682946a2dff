"""The weight matmuls outside the routed experts (`dmax_jax.layers.linear`): the CPU kernel against numpy in
float64, its gradient against XLA's, what `auto` picks, and the tied LM head kept on XLA's dot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jex_core

from dmax_jax import ModelConfig, forward, sharding
from dmax_jax.layers import cpu_kernels, linear
from dmax_jax.model import abstract_variables


# rows leaving partial 4-row tiles; widths mixing 64- and 16-column panels; >= 1024 columns: packed panels
@pytest.mark.parametrize("rows, k, n", [(1, 7, 16), (3, 33, 48), (6, 64, 80), (9, 100, 208), (6, 40, 1040),
                                        (37, 24, 1024)])
def test_native_matmul_matches_numpy(rows, k, n):
  rng = np.random.default_rng(rows)
  x, w = rng.standard_normal((rows, k)), rng.standard_normal((k, n))
  got = jax.jit(lambda x, w: linear.project(x, w, impl="native"))(jnp.asarray(x, jnp.float32),
                                                                    jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(np.asarray(got), x @ w, rtol=1e-5, atol=1e-4)


def test_native_contracts_several_axes_and_keeps_leading_ones():
  rng = np.random.default_rng(0)
  x, w = rng.standard_normal((2, 3, 4, 8)), rng.standard_normal((4, 8, 2, 16))
  got = linear.project(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), 2, impl="native")
  assert got.shape == (2, 3, 2, 16)
  np.testing.assert_allclose(np.asarray(got), np.tensordot(x, w, 2), rtol=1e-5, atol=1e-4)


def test_gradient_of_native_equals_xla():
  rng = np.random.default_rng(1)
  x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((2, 5, 24), (24, 32)))
  loss = lambda impl: lambda x, w: jnp.sum(jnp.sin(linear.project(x, w, impl=impl)))
  got = jax.jit(jax.grad(loss("native"), argnums=(0, 1)))(x, w)
  want = jax.jit(jax.grad(loss("xla"), argnums=(0, 1)))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_auto_picks_the_kernel_for_float32_decode_shapes_on_cpu_outside_meshes(monkeypatch):
  assert linear.resolve_impl("auto", linear.FEW_ROWS, 512, jnp.float32) == "native"
  assert linear.resolve_impl("auto", 32, 512, jnp.bfloat16) == "xla"
  assert linear.resolve_impl("auto", linear.FEW_ROWS + 1, 512, jnp.float32) == "xla"
  assert linear.resolve_impl("auto", linear.WIDE_MAX_ROWS, linear.WIDE_COLUMNS, jnp.float32) == "native"  # LM head
  assert linear.resolve_impl("auto", linear.WIDE_MAX_ROWS + 1, linear.WIDE_COLUMNS, jnp.float32) == "xla"  # training
  assert linear.resolve_impl("auto", 32, 40, jnp.float32) == "xla"
  assert linear.resolve_impl("xla", 32, 512, jnp.float32) == "xla"
  assert linear.resolve_impl("native", 4096, 512, jnp.float32) == "native"
  assert linear.resolve_impl("native", 32, 40, jnp.float32) == "xla"  # shapes the kernel does not take
  with sharding.use_mesh(sharding.make_mesh({"data": 2}, jax.devices()[:2])):
    assert linear.resolve_impl("auto", 32, 512, jnp.float32) == "xla"
  monkeypatch.setattr(cpu_kernels, "available", lambda: False)
  assert linear.resolve_impl("auto", 32, 512, jnp.float32) == "xla"


def test_matmul_kernel_rejects_bad_shapes():
  with pytest.raises(ValueError, match="multiple of 16"):
    cpu_kernels.matmul(jnp.zeros((4, 8)), jnp.zeros((8, 40)))
  with pytest.raises(ValueError, match="multiple of 16"):
    cpu_kernels.matmul(jnp.zeros((4, 8)), jnp.zeros((9, 16)))


def _matmul_calls(jaxpr) -> int:
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == "ffi_call" and eqn.params.get("target_name") == "dmax_cpu_matmul"
    count += sum(_matmul_calls(sub) for sub in jex_core.jaxprs_in_params(eqn.params))
  return count


def test_tied_lm_head_stays_on_xla_dot(fixture_dir):
  """Tied, the head is the embedding's transpose: the kernel would need it copied at every call."""
  untied = ModelConfig.from_json(fixture_dir)
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  calls = {}
  for tied in (False, True):
    cfg = untied.replace(tie_word_embeddings=tied)
    fn = lambda v, i, cfg=cfg: forward(cfg, v, input_ids=i)
    calls[tied] = _matmul_calls(jax.make_jaxpr(fn)(abstract_variables(cfg), ids).jaxpr)
  assert calls[False] > 0 and calls[True] == calls[False] - 1
