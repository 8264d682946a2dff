"""Partial rotary position embedding (NeoX / rotate-half style)."""

import jax
import jax.numpy as jnp


def rope_angles(positions_BxT: jax.Array, rotary_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin of `position * inv_freq`, each `[batch, seq, rotary_dim]` in float32."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
  angle_BxTxR2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq.reshape((1,) * positions_BxT.ndim + (-1,))
  angle_BxTxR = jnp.concatenate([angle_BxTxR2, angle_BxTxR2], axis=-1)
  return jnp.cos(angle_BxTxR), jnp.sin(angle_BxTxR)


def apply_partial_rope(x_BxTxNxD: jax.Array, cos_BxTxR: jax.Array, sin_BxTxR: jax.Array) -> jax.Array:
  """Rotates the first `rotary_dim` channels of every head; the remaining channels pass through.

  Args:
    x_BxTxNxD: `[batch, seq, heads, head_dim]`.
    cos_BxTxR, sin_BxTxR: `[batch, seq, rotary_dim]` from `rope_angles`.
  """
  rotary_dim = cos_BxTxR.shape[-1]
  x_rot, x_pass = x_BxTxNxD[..., :rotary_dim], x_BxTxNxD[..., rotary_dim:]
  half = rotary_dim // 2
  rotated_half = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  cos = cos_BxTxR[:, :, None, :].astype(x_BxTxNxD.dtype)
  sin = sin_BxTxR[:, :, None, :].astype(x_BxTxNxD.dtype)
  return jnp.concatenate([x_rot * cos + rotated_half * sin, x_pass], axis=-1)
