"""LM-head cross-entropy and argmax without gathering `[tokens, vocab]` logits.

On a mesh the head `[embed, vocab]` is sharded over vocabulary (the `vocab` rule); each device
multiplies the hidden states of its token shard by its vocabulary shard, and only per-token scalars
(max, sum of exponentials, label logit, best index) are reduced across the vocabulary shards. The hidden
states (`tokens x embed`, 77x smaller than the logits of LLaDA2.0-mini) are what moves: all-gathered
over the axes that shard both tokens and vocabulary.

Shape legend: B batch, L positions, N tokens, D embed, V vocabulary (`V_l` on one device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dmax_jax import sharding


def _psum(x, axes):
  return jax.lax.psum(x, axes) if axes else x


def _pmax(x, axes):
  return jax.lax.pmax(x, axes) if axes else x


def _pmin(x, axes):
  return jax.lax.pmin(x, axes) if axes else x


def _local_logits(hidden_NxD, w_DxV, axes):
  """Float32 logits of this device's vocabulary shard and the global id of its first column."""
  logits_NxV = jnp.einsum("nd,dv->nv", hidden_NxD, w_DxV, preferred_element_type=jnp.float32)
  first = jax.lax.axis_index(axes) * w_DxV.shape[1] if axes else 0
  return logits_NxV, first


def _cross_entropy(hidden_NxD, w_DxV, targets_N, axes):
  logits_NxV, first = _local_logits(hidden_NxD, w_DxV, axes)
  row_max_N = _pmax(jax.lax.stop_gradient(jnp.max(logits_NxV, axis=-1)), axes)
  sum_exp_N = _psum(jnp.sum(jnp.exp(logits_NxV - row_max_N[:, None]), axis=-1), axes)
  local_N = targets_N - first
  in_shard_N = (local_N >= 0) & (local_N < logits_NxV.shape[1])
  picked_N = jnp.take_along_axis(logits_NxV, jnp.clip(local_N, 0, logits_NxV.shape[1] - 1)[:, None], -1)[:, 0]
  label_logit_N = _psum(jnp.where(in_shard_N, picked_N, 0.0), axes)
  return row_max_N + jnp.log(sum_exp_N) - label_logit_N


def _argmax(hidden_NxD, w_DxV, axes):
  logits_NxV, first = _local_logits(hidden_NxD, w_DxV, axes)
  best_N = jnp.max(logits_NxV, axis=-1)
  index_N = jnp.argmax(logits_NxV, axis=-1).astype(jnp.int32) + first
  is_best_N = best_N == _pmax(best_N, axes)
  return _pmin(jnp.where(is_best_N, index_N, jnp.iinfo(jnp.int32).max), axes)  # lowest id wins ties


def _vocab_sharded(fn, hidden_BxLxD, w_DxV, *per_token_BxL):
  """`fn(hidden [N, D], w, *per_token [N], vocab_axes) -> [N]` on every token of `[batch, L]` inputs, per
  device in `shard_map` over the context mesh (directly without one). Each device all-gathers the
  hidden states of the devices that shard the vocabulary with it, scores them against its vocabulary
  shard, and keeps its own tokens' results (backward: a reduce-scatter of the hidden-state gradient)."""
  batch, seq_len, dim = hidden_BxLxD.shape
  if jax.sharding.get_abstract_mesh().size <= 1:
    flat = (a.reshape(batch * seq_len, *a.shape[2:]) for a in (hidden_BxLxD, *per_token_BxL))
    return fn(next(flat), w_DxV, *flat, ()).reshape(batch, seq_len)
  vocab_axes = sharding.param_axes(("embed", "vocab"), 1)
  spec = sharding.fitted_spec(("batch", "length", "act_embed"), hidden_BxLxD.shape)
  gather_axes = tuple(a for a in sharding.flat_axes(spec[:2]) if a in vocab_axes)

  @jax.named_scope("vocab_parallel_head")  # shard_map bodies start a fresh name stack
  def local(hidden_BxLxD, w_DxV, *per_token_BxL):
    b, l, _ = hidden_BxLxD.shape
    flat = [a.reshape(b * l, *a.shape[2:]) for a in (hidden_BxLxD, *per_token_BxL)]
    if gather_axes:
      flat = [jax.lax.all_gather(a, gather_axes, axis=0, tiled=True) for a in flat]
    out_N = fn(flat[0], w_DxV, *flat[1:], vocab_axes)
    if gather_axes:
      out_N = jax.lax.dynamic_slice_in_dim(out_N, jax.lax.axis_index(gather_axes) * b * l, b * l)
    return out_N.reshape(b, l)

  tokens = P(*spec[:2])
  return jax.shard_map(local, in_specs=(spec, P(None, vocab_axes or None)) + (tokens,) * len(per_token_BxL),
                       out_specs=tokens)(hidden_BxLxD, w_DxV, *per_token_BxL)


def cross_entropy(hidden_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Float32 `[batch, L]`: `logsumexp(hidden @ w) - (hidden @ w)[target]` per position."""
  return _vocab_sharded(_cross_entropy, hidden_BxLxD, w_DxV, targets_BxL)


def argmax(hidden_BxLxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
  """Int32 `[batch, L]`: the id of the largest logit (the lowest id among equal ones, as `jnp.argmax`)."""
  return _vocab_sharded(_argmax, hidden_BxLxD, w_DxV)
