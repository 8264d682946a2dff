"""The static KV cache and per-row slicing: every row of a batch has its own block position.

The cache follows the model's layer layout: stacked `[layers, batch, kv_heads, max_len, head_dim]` arrays
(`scan_layers=True`), or tuples of per-layer `[batch, kv_heads, max_len, head_dim]` arrays (unrolled layers:
a forward reads and writes each layer's array in place, nothing sliced out of a stack). Heads-major, as
attention reads it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmax_jax.config import ModelConfig
from dmax_jax.layers.attention import mask_to_bias
from dmax_jax.model import LayerKV

CACHE_AXES = ("layers", "batch", "act_kv_heads", "cache_length", "head_dim")
_POSITION_AXIS = -2  # of a cache array


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> LayerKV:
  """Zero cache in the compute dtype, in the layer layout of `cfg.scan_layers`."""
  layer_shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
  if cfg.scan_layers:
    zeros = jnp.zeros((cfg.num_hidden_layers,) + layer_shape, jnp.dtype(cfg.dtype))
    return constrain(LayerKV(zeros, zeros))
  zeros = tuple(jnp.zeros(layer_shape, jnp.dtype(cfg.dtype)) for _ in range(cfg.num_hidden_layers))
  return constrain(LayerKV(zeros, zeros))


def constrain(cache: LayerKV) -> LayerKV:
  """Shards the cache by the logical-axis rules (no-op outside `sharding.use_mesh`)."""
  return jax.tree.map(lambda c: nn.with_logical_constraint(c, CACHE_AXES[-c.ndim:]), cache)


def length(cache: LayerKV) -> int:
  """Positions the cache holds (`max_len`)."""
  return jax.tree.leaves(cache.k)[0].shape[_POSITION_AXIS]


def take_rows(x_BxSx: jax.Array, start_B: jax.Array, size: int, axis: int = 1) -> jax.Array:
  """`x[b, start[b] : start[b] + size]` for every row b (positions on `axis` of x): `[batch, size, ...]`."""
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, size, axis=axis - 1))(x_BxSx, start_B)


def put_rows(x_BxSx: jax.Array, update_BxTx: jax.Array, start_B: jax.Array, axis: int = 1) -> jax.Array:
  """Writes `update[b]` at `x[b, start[b]:]` for every row b (positions on `axis` of x)."""
  return jax.vmap(lambda row, u, s: jax.lax.dynamic_update_slice_in_dim(row, u, s, axis=axis - 1))(
      x_BxSx, update_BxTx, start_B)


def write(cache: LayerKV, kv: LayerKV, start_B: jax.Array, rows_B: jax.Array) -> LayerKV:
  """Stores this call's keys/values (`[layers, batch, kv_heads, T, head_dim]` or per-layer tuples, as the cache)
  at positions `start[b]..` of the rows where `rows_B` is True (the others keep theirs)."""
  def put_layer(c_BxKxSxD, new_BxKxTxD):
    old = take_rows(c_BxKxSxD, start_B, new_BxKxTxD.shape[2], axis=2)
    new = jnp.where(rows_B.reshape((-1,) + (1,) * (old.ndim - 1)), new_BxKxTxD, old)
    return put_rows(c_BxKxSxD, new, start_B, axis=2)

  if isinstance(cache.k, tuple):
    put = lambda c, new: tuple(put_layer(c_l, n_l) for c_l, n_l in zip(c, new))
  else:
    put = jax.vmap(put_layer)  # over layers
  return constrain(LayerKV(put(cache.k, kv.k), put(cache.v, kv.v)))


def write_row(cache: LayerKV, kv: LayerKV, row) -> LayerKV:
  """Stores one row's keys/values (batch 1, positions `0..T-1`, layout as the cache) into row `row`."""
  if isinstance(cache.k, tuple):
    put = lambda c, new: tuple(jax.lax.dynamic_update_slice_in_dim(c_l, n_l, row, axis=0) for c_l, n_l in zip(c, new))
  else:
    put = lambda c, new: jax.lax.dynamic_update_slice_in_dim(c, new, row, axis=1)
  return constrain(LayerKV(put(cache.k, kv.k), put(cache.v, kv.v)))


def block_causal(length: int, blk_len: int) -> jax.Array:
  """Keep mask `[length, length]` of consecutive blocks: a position sees its own block and the ones before."""
  block_ids = jnp.arange(length) // blk_len
  return block_ids[None, :] <= block_ids[:, None]


def attention_bias(cache_len: int, start_B: jax.Array, keep_new_TxT: jax.Array) -> jax.Array:
  """Additive bias `[batch, 1, T, cache_len + T]` for T new tokens of each row placed at `start[b]`:
  cached keys are visible below `start[b]` (the rest of the cache is stale or unwritten), new keys as
  `keep_new_TxT` says."""
  t = keep_new_TxT.shape[0]
  keep_cache_BxS = jnp.arange(cache_len)[None, :] < start_B[:, None]
  keep = jnp.concatenate([jnp.broadcast_to(keep_cache_BxS[:, None, :], (start_B.shape[0], t, cache_len)),
                          jnp.broadcast_to(keep_new_TxT[None], (start_B.shape[0], t, t))], axis=-1)
  return mask_to_bias(keep[:, None], start_B.shape[0], t, cache_len + t)
