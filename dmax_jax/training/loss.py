"""The On-Policy Uniform Training (OPUT) objective of DMax on the block-diffusion `noisy ⊕ clean` input.

The model sees `concat(noisy, clean)` (length 2L) with positions `arange(L) ⊕ arange(L)` under the
block-diffusion mask. The rollout pass (no gradient) predicts every masked noisy position; for rows with
`flags[b]` those positions are replaced by the argmax, and the training pass is scored by cross-entropy
of its noisy-half logits against the clean labels at the same positions (no shift).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dmax_jax.config import ModelConfig
from dmax_jax.layers.attention import mask_to_bias
from dmax_jax.layers import vocab_parallel
from dmax_jax.model import apply_model, embed_tokens, lm_head, lm_head_weight

IGNORE_INDEX = -100
# How label tokens are averaged over a global batch. "tokens": every label token of the batch weighs the
# same (sum / count). "sequence": each row's mean over its label tokens, then the mean over rows: the
# official dFactory trainer (micro-batch 1, the per-sequence loss averaged over the accumulated micro-batches).
LOSS_WEIGHTINGS = ("tokens", "sequence")


def block_diffusion_mask(seq_len: int, block_size: int) -> jax.Array:
  """Keep mask `[2L, 2L]` (True = attend) over `noisy ⊕ clean`.

  Noisy block b sees noisy block b and clean blocks < b; clean block b sees clean blocks <= b; clean
  never sees noisy.
  """
  block = jnp.arange(seq_len) // block_size
  q, k = block[:, None], block[None, :]
  noisy_rows = jnp.concatenate([q == k, k < q], axis=1)
  clean_rows = jnp.concatenate([jnp.zeros((seq_len, seq_len), bool), k <= q], axis=1)
  return jnp.concatenate([noisy_rows, clean_rows], axis=0)


def _noisy_half_hidden(config: ModelConfig, variables: Any, input_ids_Bx2L, bias) -> jax.Array:
  """Final-normed hidden states `[batch, L, hidden]` of the noisy half, in the compute dtype."""
  seq_len = input_ids_Bx2L.shape[1] // 2
  positions = jnp.tile(jnp.arange(seq_len, dtype=jnp.int32), 2)[None]
  positions = jnp.broadcast_to(positions, input_ids_Bx2L.shape)
  hidden, _ = apply_model(config, variables, embed_tokens(config, variables, input_ids_Bx2L), positions,
                          bias, return_hidden=True)
  return hidden[:, :seq_len].astype(jnp.dtype(config.dtype))


def _head_scores(config: ModelConfig, variables: Any, hidden_BxLxH, targets_BxL=None) -> jax.Array:
  """Per position: the cross-entropy against `targets_BxL` (float32), or without targets the argmax id.

  The LM head only ever sees the noisy half. `parallelism="gspmd"` materialises the logits and leaves
  their layout to the partitioner (the measured baseline); otherwise the vocabulary-parallel head.
  """
  if config.parallelism == "gspmd":
    logits = lm_head(config, variables, hidden_BxLxH)
    if targets_BxL is None:
      return jnp.argmax(logits, axis=-1)
    label_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - label_logit
  w = lm_head_weight(config, variables)
  if targets_BxL is None:
    return vocab_parallel.argmax(hidden_BxLxH, w)
  return vocab_parallel.cross_entropy(hidden_BxLxH, w, targets_BxL)

def weighted_loss_terms(ce_BxL, valid_BxL, weighting: str = "tokens") -> tuple[jax.Array, jax.Array]:
  """`(numerator, denominator)` of the batch loss under `weighting` (see LOSS_WEIGHTINGS), float32.

  Kept as a ratio so that gradient accumulation adds numerators and denominators over micro-batches:
  "tokens" gives (sum of CE, label tokens), "sequence" (sum over rows of the row's mean CE, rows with
  at least one label token). Rows without label tokens weigh nothing under either.
  """
  ce_BxL = jnp.where(valid_BxL, ce_BxL, 0.0).astype(jnp.float32)
  if weighting == "tokens":
    return jnp.sum(ce_BxL), jnp.sum(valid_BxL).astype(jnp.float32)
  if weighting != "sequence":
    raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
  count_B = jnp.sum(valid_BxL, axis=1).astype(jnp.float32)
  row_mean_B = jnp.sum(ce_BxL, axis=1) / jnp.maximum(count_B, 1.0)
  return jnp.sum(row_mean_B), jnp.sum(count_B > 0).astype(jnp.float32)


def oput_loss_terms(config: ModelConfig, variables: Any, noisy_ids_BxL, clean_ids_BxL, labels_BxL,
                    flags_B, block_size: int, on_policy: bool = True,
                    weighting: str = "tokens") -> tuple[jax.Array, jax.Array, jax.Array]:
  """`(loss numerator, loss denominator, number of label tokens)`, float32 scalars (see
  `weighted_loss_terms`). `on_policy=False` (static) drops the rollout from the program: plain
  masked-diffusion SFT whatever the flags.
  """
  seq_len = noisy_ids_BxL.shape[1]
  bias = mask_to_bias(block_diffusion_mask(seq_len, block_size), 1, 2 * seq_len, 2 * seq_len)
  masked = noisy_ids_BxL == config.mask_token_id

  def rollout():
    frozen = jax.lax.stop_gradient(variables)
    hidden = _noisy_half_hidden(config, frozen, jnp.concatenate([noisy_ids_BxL, clean_ids_BxL], 1), bias)
    guess = _head_scores(config, frozen, hidden).astype(noisy_ids_BxL.dtype)
    return jnp.where(masked & flags_B[:, None], guess, noisy_ids_BxL)

  flags_B = jnp.asarray(flags_B, bool)
  # Rows without the flag keep their masked input; skip the rollout when no row needs it.
  policy_ids = jax.lax.cond(jnp.any(flags_B), rollout, lambda: noisy_ids_BxL) if on_policy else noisy_ids_BxL
  hidden = _noisy_half_hidden(config, variables, jnp.concatenate([policy_ids, clean_ids_BxL], 1), bias)
  valid = labels_BxL != IGNORE_INDEX
  ce = _head_scores(config, variables, hidden, jnp.where(valid, labels_BxL, 0))
  numerator, denominator = weighted_loss_terms(ce, valid, weighting)
  return numerator, denominator, jnp.sum(valid).astype(jnp.float32)


def oput_loss(config: ModelConfig, params: Any, noisy_ids, clean_ids, labels, flags,
              block_size: int, weighting: str = "tokens") -> jax.Array:
  """OPUT loss (mean cross-entropy over label tokens, weighted by `weighting`), pure and jittable.

  Args:
    config: model config (static under jit); `config.mask_token_id` marks the masked positions.
    params: model variables `{"params": ..., "buffers": ...}`.
    noisy_ids: `[batch, L]` int, clean ids with masked answer positions set to the mask id.
    clean_ids: `[batch, L]` int.
    labels: `[batch, L]` int, clean ids or -100 (ignored), same positions as the inputs (no shift).
    flags: `[batch]` bool; True = on-policy rollout for that row, False = plain masked input.
    block_size: block-diffusion block length (L must be a multiple).
    weighting: "tokens" (every label token of the batch alike) or "sequence" (mean of per-row means).
  Returns:
    float32 scalar.
  """
  if noisy_ids.shape[1] % block_size:
    raise ValueError(f"sequence length {noisy_ids.shape[1]} is not a multiple of block_size {block_size}")
  numerator, denominator, _ = oput_loss_terms(config, params, noisy_ids, clean_ids, labels, flags, block_size,
                                               weighting=weighting)
  return numerator / jnp.maximum(denominator, 1.0)
