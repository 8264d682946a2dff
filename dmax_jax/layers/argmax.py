"""`jnp.argmax` over the last axis in two vectorised passes.

XLA:CPU lowers `argmax` to a variadic (value, index) reduction that it does not vectorise: over a 32k vocab it
costs ~2 ns per logit, more than the softmax beside it (`benchmarks/decode_profile.py`). The maximum of each
chunk of `CHUNK` entries is a plain vectorised reduction; the argmax then only runs over the chunk maxima and
inside the one winning chunk. For finite or infinite entries the result is identical, ties included: the
first chunk holding the maximum holds its first occurrence. (NaN is not ordered the same way: XLA:CPU's
vectorised maximum may skip it, where `jnp.argmax` returns the first NaN.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CHUNK = 128


def chunked_max_argmax(x_NxV: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(largest entry, its int32 index)` along the last axis, the lowest index among equal ones (`jnp.max`,
  `jnp.argmax` on NaN-free input); the maximum comes from the chunk maxima, not from another pass."""
  v = x_NxV.shape[-1]
  chunk = next((c for c in (CHUNK, 64, 32, 16, 8) if v % c == 0 and v > c), None)
  if chunk is None:
    return jnp.max(x_NxV, axis=-1), jnp.argmax(x_NxV, axis=-1).astype(jnp.int32)
  chunks = x_NxV.reshape(*x_NxV.shape[:-1], v // chunk, chunk)
  chunk_max = chunks.max(-1)
  best_chunk = jnp.argmax(chunk_max, axis=-1)
  winner = jnp.take_along_axis(chunks, best_chunk[..., None, None], axis=-2)[..., 0, :]
  return chunk_max.max(-1), (best_chunk * chunk + jnp.argmax(winner, axis=-1)).astype(jnp.int32)


def chunked_argmax(x_NxV: jax.Array) -> jax.Array:
  """Int32 index of the largest entry along the last axis (see `chunked_max_argmax`)."""
  return chunked_max_argmax(x_NxV)[1]
