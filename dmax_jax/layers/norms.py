"""RMSNorm, computed in float32 whatever the activation dtype."""

import jax
import jax.numpy as jnp


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """`scale * x / sqrt(mean(x^2) + eps)` over the last axis, statistics in float32.

  Args:
    x: `[..., dim]`.
    scale: `[dim]`.
  Returns:
    `[..., dim]` in the dtype of `x` (as the official model: normalise in float32, cast back, then scale).
  """
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  scale = scale.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
  return (scale * normed.astype(x.dtype).astype(jnp.float32)).astype(x.dtype)
