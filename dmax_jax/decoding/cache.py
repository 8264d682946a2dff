"""The static KV cache and per-row slicing: every row of a batch has its own block position."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dmax_jax.config import ModelConfig
from dmax_jax.layers.attention import mask_to_bias
from dmax_jax.model import KVCacheView

CACHE_AXES = ("layers", "batch", "cache_length", "act_kv_heads", "head_dim")


def init_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCacheView:
  """Zero cache, k and v each `[layers, batch, max_len, kv_heads, head_dim]` in the compute dtype."""
  shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
  zeros = jnp.zeros(shape, jnp.dtype(cfg.dtype))
  return constrain(KVCacheView(zeros, zeros))


def constrain(cache: KVCacheView) -> KVCacheView:
  """Shards the cache by the logical-axis rules (no-op outside `sharding.use_mesh`)."""
  return KVCacheView(*(nn.with_logical_constraint(c, CACHE_AXES) for c in cache))


def take_rows(x_BxSx: jax.Array, start_B: jax.Array, size: int) -> jax.Array:
  """`x[b, start[b] : start[b] + size]` for every row b: `[batch, size, ...]`."""
  return jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, size, axis=0))(x_BxSx, start_B)


def put_rows(x_BxSx: jax.Array, update_BxTx: jax.Array, start_B: jax.Array) -> jax.Array:
  """Writes `update[b]` at `x[b, start[b]:]` for every row b."""
  return jax.vmap(lambda row, u, s: jax.lax.dynamic_update_slice_in_dim(row, u, s, axis=0))(
      x_BxSx, update_BxTx, start_B)


def write(cache: KVCacheView, kv: KVCacheView, start_B: jax.Array) -> KVCacheView:
  """Stores this call's keys/values `[layers, batch, T, ...]` at positions `start[b]..` of each row."""
  put = jax.vmap(put_rows, in_axes=(0, 0, None))  # over layers
  return constrain(KVCacheView(put(cache.k, kv.k, start_B), put(cache.v, kv.v, start_B)))


def attention_bias(cache_len: int, start_B: jax.Array, keep_new_TxT: jax.Array) -> jax.Array:
  """Additive bias `[batch, 1, T, cache_len + T]` for T new tokens of each row placed at `start[b]`:
  cached keys are visible below `start[b]` (the rest of the cache is stale or unwritten), new keys as
  `keep_new_TxT` says."""
  t = keep_new_TxT.shape[0]
  keep_cache_BxS = jnp.arange(cache_len)[None, :] < start_B[:, None]
  keep = jnp.concatenate([jnp.broadcast_to(keep_cache_BxS[:, None, :], (start_B.shape[0], t, cache_len)),
                          jnp.broadcast_to(keep_new_TxT[None], (start_B.shape[0], t, t))], axis=-1)
  return mask_to_bias(keep[:, None], start_B.shape[0], t, cache_len + t)
