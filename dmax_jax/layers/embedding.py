"""Token-embedding lookup from a table sharded by embedding columns.

The table `[vocab, embed]` is sharded over its columns (the `table_embed` rule), so every device can
look up any token. On a mesh each device gathers the token ids of the devices whose tokens it shares
column work with (4 bytes a token), looks up its columns for all of them, and one all-to-all hands every
device its own tokens' columns (an all-gather adds the columns of axes that do not shard tokens):
`tokens x embed` bytes move, never the table, and nothing is summed.

Shape legend: B batch, T positions, N tokens, D embed, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dmax_jax import sharding


def lookup(table_VxH: jax.Array, ids_BxT: jax.Array) -> jax.Array:
  """`table[ids]`, `[batch, seq, H]`; in `shard_map` over the context mesh when there is one."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.size <= 1:
    return jnp.take(table_VxH, ids_BxT, axis=0)
  sizes = dict(mesh.shape)
  column_axes = sharding.param_axes(("table_vocab", "table_embed"), 1)
  spec = sharding.fitted_spec(("batch", "length"), ids_BxT.shape)
  token_axes = sharding.flat_axes(spec)
  exchange_axes = tuple(a for a in column_axes if a in token_axes)
  gather_axes = tuple(a for a in column_axes if a not in token_axes)
  block_order = [column_axes.index(a) for a in gather_axes + exchange_axes]

  @jax.named_scope("embedding_lookup")  # shard_map bodies start a fresh name stack
  def local(table_VxH, ids_BxT):
    b, t = ids_BxT.shape
    ids_T = ids_BxT.reshape(b * t)
    if exchange_axes:
      ids_T = jax.lax.all_gather(ids_T, exchange_axes, axis=0, tiled=True)
    rows_TxH = jnp.take(table_VxH, ids_T, axis=0)
    if exchange_axes:  # all tokens x my columns -> my tokens x the columns of the exchange group
      rows_TxH = jax.lax.all_to_all(rows_TxH, exchange_axes, split_axis=0, concat_axis=1, tiled=True)
    if gather_axes:
      rows_TxH = jax.lax.all_gather(rows_TxH, gather_axes, axis=1, tiled=True, to="invarying")
    # Column blocks arrived ordered (gather axes, exchange axes); the table orders them as its rule.
    blocks = rows_TxH.reshape(b * t, *(sizes[column_axes[i]] for i in block_order), -1)
    blocks = jnp.transpose(blocks, (0, *(1 + block_order.index(i) for i in range(len(column_axes))),
                                    blocks.ndim - 1))
    return blocks.reshape(b, t, -1)

  return jax.shard_map(local, in_specs=(P(None, column_axes or None), spec),
                       out_specs=P(*spec, None))(table_VxH, ids_BxT)
