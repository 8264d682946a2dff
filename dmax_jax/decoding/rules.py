"""One refinement step of each decoding algorithm, on the logits of the current block.

Everything is batched over rows `[batch, block]`; a row's decision never looks at another row.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

# Why an SPD block ended (per-row stop codes); threshold decoding reports BLOCK_DONE.
NOT_STOPPED, ALL_ACTIVE_CONFIDENT, NO_CHANGE, MAX_STEPS, BLOCK_DONE = 0, 1, 2, 3, 4
STOP_REASONS = {ALL_ACTIVE_CONFIDENT: "all_active_confident", NO_CHANGE: "no_change",
                MAX_STEPS: "max_steps", BLOCK_DONE: "block_done"}


def pick_tokens(logits_BxTxV: jax.Array, temperature, noise_key_B: jax.Array | None):
  """Token choice and its probability, `(x0 [batch, block] int32, p [batch, block] f32)`.

  Greedy when `noise_key_B` is None; otherwise Gumbel-max sampling from softmax(logits / temperature)
  with one key per row (`noise_key_B` typed keys `[batch]`).
  """
  logits = logits_BxTxV.astype(jnp.float32)
  if noise_key_B is not None:
    logits = logits / temperature
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[1:], jnp.float32))(noise_key_B)
    x0 = jnp.argmax(logits + gumbel, axis=-1)
  else:
    x0 = jnp.argmax(logits, axis=-1)
  chosen = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
  p = jnp.exp(chosen - jax.nn.logsumexp(logits, axis=-1))
  return x0.astype(jnp.int32), p


def _leftmost(mask_BxT: jax.Array) -> jax.Array:
  """One-hot of the first True position of each row (all False when the row has none)."""
  return mask_BxT & (jnp.cumsum(mask_BxT, axis=-1) == 1)


def spd_select(x_BxT, active_BxT, x0_BxT, p_BxT, threshold, mask_id):
  """SPD token update: `(new tokens [batch, block], decoded [batch, block], changed [batch, block])`.

  Masked positions left of the first masked position with p < threshold are decoded (at least the
  leftmost masked one); every already-decoded active position is re-predicted (self-revision).
  """
  masked = x_BxT == mask_id
  before_low = jnp.cumsum(masked & (p_BxT < threshold), axis=-1) == 0
  candidates = masked & before_low
  candidates = jnp.where(candidates.any(-1, keepdims=True), candidates, _leftmost(masked))
  update = jnp.where(masked.any(-1, keepdims=True), candidates | (active_BxT & ~masked), active_BxT)
  changed = update & (x0_BxT != x_BxT)
  return jnp.where(update, x0_BxT, x_BxT), masked & update, changed


def spd_stop(active_BxT, p_BxT, changed_BxT, step, max_steps, converge_threshold) -> jax.Array:
  """Stop code `[batch]` after step `step` (1-based) of a block."""
  confident = jnp.all(~active_BxT | (p_BxT >= converge_threshold), axis=-1)
  return jnp.where(confident, ALL_ACTIVE_CONFIDENT,
                   jnp.where(~changed_BxT.any(-1), NO_CHANGE,
                             jnp.where(step >= max_steps, MAX_STEPS, NOT_STOPPED))).astype(jnp.int32)


def soft_embeddings(prev_BxTxH, hard_BxTxH, soft_BxT, reset_BxT, p_BxT, mask_emb_H):
  """Next SPD block input: soft positions get p·E[x0] + (1-p)·E[mask] rescaled to the interpolated
  norm (a soft position holds x0 after the update, so its hard embedding is E[x0]); `reset` positions
  get their hard embedding; the rest keep `prev`. Float32 `[batch, block, hidden]`."""
  p = p_BxT[..., None]
  mixed = p * hard_BxTxH + (1 - p) * mask_emb_H
  target_norm = p * jnp.linalg.norm(hard_BxTxH, axis=-1, keepdims=True) + (1 - p) * jnp.linalg.norm(mask_emb_H)
  mixed = mixed * target_norm / (jnp.linalg.norm(mixed, axis=-1, keepdims=True) + 1e-6)
  base = jnp.where(reset_BxT[..., None], hard_BxTxH, prev_BxTxH)
  return jnp.where(soft_BxT[..., None], mixed, base)


def threshold_select(x_BxT, x0_BxT, p_BxT, threshold, quota, mask_id):
  """Official LLaDA2.0 commit rule: masked positions with p > threshold if there are at least `quota`
  of them, else the `quota` most confident masked ones. Decoded tokens are never revised."""
  masked = x_BxT == mask_id
  conf = jnp.where(masked, p_BxT, -jnp.inf)
  high = conf > threshold
  # rank by confidence (descending), ties to the lower position
  t = x_BxT.shape[-1]
  idx = jnp.arange(t)
  ahead = (conf[:, None, :] > conf[:, :, None]) | ((conf[:, None, :] == conf[:, :, None])
                                                   & (idx[None, :] < idx[:, None]))
  top = masked & (ahead.sum(-1) < quota)
  transfer = jnp.where((high.sum(-1) >= quota)[:, None], high, top)
  return jnp.where(transfer, x0_BxT, x_BxT), transfer
