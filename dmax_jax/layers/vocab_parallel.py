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
from dmax_jax.layers.argmax import chunked_max_argmax


def _psum(x, axes):
  return jax.lax.psum(x, axes) if axes else x


def _pmax(x, axes):
  return jax.lax.pmax(x, axes) if axes else x


def _pmin(x, axes):
  return jax.lax.pmin(x, axes) if axes else x


def _local_logits(hidden_TxH, w_HxV, axes):
  """Float32 logits of this device's vocabulary shard and the global id of its first column."""
  logits_TxV = jnp.einsum("th,hv->tv", hidden_TxH, w_HxV, preferred_element_type=jnp.float32)
  first = jax.lax.axis_index(axes) * w_HxV.shape[1] if axes else 0
  return logits_TxV, first


def _cross_entropy(hidden_TxH, w_HxV, targets_T, axes):
  logits_TxV, first = _local_logits(hidden_TxH, w_HxV, axes)
  row_max_T = _pmax(jax.lax.stop_gradient(jnp.max(logits_TxV, axis=-1)), axes)
  sum_exp_T = _psum(jnp.sum(jnp.exp(logits_TxV - row_max_T[:, None]), axis=-1), axes)
  local_T = targets_T - first
  in_shard_T = (local_T >= 0) & (local_T < logits_TxV.shape[1])
  picked_T = jnp.take_along_axis(logits_TxV, jnp.clip(local_T, 0, logits_TxV.shape[1] - 1)[:, None], -1)[:, 0]
  label_logit_T = _psum(jnp.where(in_shard_T, picked_T, 0.0), axes)
  return row_max_T + jnp.log(sum_exp_T) - label_logit_T


def _argmax(hidden_TxH, w_HxV, axes):
  logits_TxV, first = _local_logits(hidden_TxH, w_HxV, axes)
  best_T, index_T = chunked_max_argmax(logits_TxV)
  index_T = index_T + first
  is_best_T = best_T == _pmax(best_T, axes)
  return _pmin(jnp.where(is_best_T, index_T, jnp.iinfo(jnp.int32).max), axes)  # lowest id wins ties


def _vocab_sharded(fn, hidden_BxLxH, w_HxV, *per_token_BxL):
  """`fn(hidden [T, H], w, *per_token [T], vocab_axes) -> [T]` on every token of `[batch, L]` inputs, per
  device in `shard_map` over the context mesh (directly without one). Each device all-gathers the
  hidden states of the devices that shard the vocabulary with it, scores them against its vocabulary
  shard, and keeps its own tokens' results (backward: a reduce-scatter of the hidden-state gradient)."""
  batch, seq_len, _ = hidden_BxLxH.shape
  if jax.sharding.get_abstract_mesh().size <= 1:
    flat = (a.reshape(batch * seq_len, *a.shape[2:]) for a in (hidden_BxLxH, *per_token_BxL))
    return fn(next(flat), w_HxV, *flat, ()).reshape(batch, seq_len)
  vocab_axes = sharding.param_axes(("embed", "vocab"), 1)
  spec = sharding.fitted_spec(("batch", "length", "act_embed"), hidden_BxLxH.shape)
  gather_axes = tuple(a for a in sharding.flat_axes(spec[:2]) if a in vocab_axes)

  @jax.named_scope("vocab_parallel_head")  # shard_map bodies start a fresh name stack
  def local(hidden_BxLxH, w_HxV, *per_token_BxL):
    b, l, _ = hidden_BxLxH.shape
    flat = [a.reshape(b * l, *a.shape[2:]) for a in (hidden_BxLxH, *per_token_BxL)]
    if gather_axes:
      flat = [jax.lax.all_gather(a, gather_axes, axis=0, tiled=True) for a in flat]
    out_U = fn(flat[0], w_HxV, *flat[1:], vocab_axes)  # U: the tokens gathered over the vocabulary group
    out_T = jax.lax.dynamic_slice_in_dim(out_U, jax.lax.axis_index(gather_axes) * b * l, b * l) if gather_axes else out_U
    return out_T.reshape(b, l)

  tokens = P(*spec[:2])
  return jax.shard_map(local, in_specs=(spec, P(None, vocab_axes or None)) + (tokens,) * len(per_token_BxL),
                       out_specs=tokens)(hidden_BxLxH, w_HxV, *per_token_BxL)


def cross_entropy(hidden_BxLxH: jax.Array, w_HxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Float32 `[batch, L]`: `logsumexp(hidden @ w) - (hidden @ w)[target]` per position."""
  return _vocab_sharded(_cross_entropy, hidden_BxLxH, w_HxV, targets_BxL)


def argmax(hidden_BxLxH: jax.Array, w_HxV: jax.Array) -> jax.Array:
  """Int32 `[batch, L]`: the id of the largest logit (the lowest id among equal ones, as `jnp.argmax`)."""
  return _vocab_sharded(_argmax, hidden_BxLxH, w_HxV)
