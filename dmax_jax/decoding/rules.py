"""One refinement step of each decoding algorithm, on the logits of the current block: the pure pieces, and
the algorithms as `DecodingRule` objects (`SoftParallel`, `Threshold`) that the compiled decoder, the eager
reference and the result unpacking all use, so a new algorithm is a new class.

Everything is batched over rows `[batch, block]`; a row's decision never looks at another row.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dmax_jax.layers.argmax import chunked_argmax

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
    x0 = chunked_argmax(logits + gumbel)
  else:
    x0 = chunked_argmax(logits)
  chosen = jnp.take_along_axis(logits, x0[..., None], axis=-1)[..., 0]
  p = jnp.exp(chosen - jax.nn.logsumexp(logits, axis=-1))
  return x0, p


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
  mask_emb_1x1xH = mask_emb_H.reshape(1, 1, -1)
  mixed = p * hard_BxTxH + (1 - p) * mask_emb_1x1xH
  target_norm = p * jnp.linalg.norm(hard_BxTxH, axis=-1, keepdims=True) + (1 - p) * jnp.linalg.norm(mask_emb_H)
  mixed = mixed * target_norm / (jnp.linalg.norm(mixed, axis=-1, keepdims=True) + 1e-6)
  base = jnp.where(reset_BxT[..., None], hard_BxTxH, prev_BxTxH)
  return jnp.where(soft_BxT[..., None], mixed, base)


def threshold_select(x_BxT, x0_BxT, p_BxT, threshold, quota, mask_id):
  """Official LLaDA2.0 commit rule: masked positions with p > threshold if there are at least `quota`
  of them, else the `quota` most confident masked ones (`quota` a scalar or int32 `[batch]`). Decoded tokens are
  never revised."""
  masked = x_BxT == mask_id
  conf = jnp.where(masked, p_BxT, -jnp.inf)
  high = conf > threshold
  # rank by confidence (descending), ties to the lower position
  t = x_BxT.shape[-1]
  idx = jnp.arange(t)
  ahead = (conf[:, None, :] > conf[:, :, None]) | ((conf[:, None, :] == conf[:, :, None])
                                                   & (idx[None, None, :] < idx[None, :, None]))
  quota_Bx1 = jnp.reshape(quota, (-1, 1))  # one for the batch or one per row
  top = masked & (ahead.sum(-1) < quota_Bx1)
  transfer = jnp.where(high.sum(-1, keepdims=True) >= quota_Bx1, high, top)
  return jnp.where(transfer, x0_BxT, x_BxT), transfer


# ---- the decoding algorithms as objects ----------------------------------------------------------------------

@struct.dataclass
class Knobs:
  """Traced values the rules read: thresholds change without recompiling; `quota` is derived from static
  lengths (only threshold decoding reads it)."""
  threshold: jax.Array           # f32 scalar: commit confidence
  converge_threshold: jax.Array  # f32 scalar: SPD's block-convergence confidence
  quota: jax.Array               # [max_steps] int32: threshold decoding's commit schedule


@struct.dataclass
class Update:
  """A rule's decision for one step, `[batch, block]` unless noted."""
  tokens: jax.Array    # int32: the block after the step
  decoded: jax.Array   # bool: masked positions filled this step
  changed: jax.Array   # bool: positions whose token changed
  stop: jax.Array      # int32 [batch]: stop code (STOP_REASONS), NOT_STOPPED while the block goes on


class DecodingRule(Protocol):
  """A block-diffusion decoding algorithm: how a step turns predictions into tokens and the next block input,
  when a block ends, how forwards and answers are counted. Part of the compiled program's static arguments,
  so a rule must be immutable, value-equal and hashable (a frozen dataclass), built as
  `cls(max_steps=..., mask_id=...)` by `DecodeOptions.rule`.

  max_steps: forwards per block at most. mask_id: the mask token.
  name: the `DecodeOptions.mode` it implements.
  counts_prefill: the prefill forward counts as one forward in NFE (dInfer's convention).
  fills_after_eos: every position after a block that generated EOS becomes EOS (dInfer's convention).
  """
  max_steps: int
  mask_id: int
  name: str
  counts_prefill: bool
  fills_after_eos: bool

  def update(self, x_BxT, active_BxT, x0_BxT, p_BxT, step, knobs: Knobs) -> Update:
    """Step `step` (1-based; a scalar or int32 `[batch]`, rows may be at different steps) of a block: `x` the
    block before it, `active` its positions that started masked, `(x0, p)` the prediction and its probability."""

  def next_inputs(self, embed: Callable[[jax.Array], jax.Array], prev_emb_BxTxH, update: Update, active_BxT,
                  p_BxT, mask_emb_H, first: bool) -> jax.Array:
    """Float32 `[batch, block, hidden]` input embeddings of the block's next step (`embed`: ids -> f32);
    `first` (a bool or bool `[batch]`): the step was the block's first."""

  def answer(self, generated: np.ndarray, eos_id: int, gen_length: int) -> tuple[np.ndarray, int]:
    """`(answer ids, TPF numerator)` of a row from its generated tokens (host side)."""

  def response(self, generated: np.ndarray, eos_id: int, gen_length: int) -> np.ndarray:
    """The ids a benchmark scores (host side)."""


@dataclasses.dataclass(frozen=True)
class _RuleParams:
  """What every rule is built with: the step cap per block and the mask id."""
  max_steps: int
  mask_id: int


@dataclasses.dataclass(frozen=True)
class SoftParallel(_RuleParams):
  """DMax soft parallel decoding: decode the leftmost confident run of masked positions, revise every decoded
  position each step, feed decoded positions back as confidence-weighted soft embeddings; a block ends when
  every position it decodes is confident, nothing changed, or after `max_steps`."""
  name: ClassVar[str] = "spd"
  counts_prefill: ClassVar[bool] = True
  fills_after_eos: ClassVar[bool] = True

  def update(self, x_BxT, active_BxT, x0_BxT, p_BxT, step, knobs: Knobs) -> Update:
    tokens, decoded, changed = spd_select(x_BxT, active_BxT, x0_BxT, p_BxT, knobs.threshold, self.mask_id)
    stop = spd_stop(active_BxT, p_BxT, changed, step, self.max_steps, knobs.converge_threshold)
    return Update(tokens=tokens, decoded=decoded, changed=changed, stop=stop)

  def next_inputs(self, embed, prev_emb_BxTxH, update: Update, active_BxT, p_BxT, mask_emb_H, first: bool):
    soft = active_BxT & (update.tokens != self.mask_id)
    reset = (~soft & update.changed) | jnp.reshape(first, (-1, 1))
    return soft_embeddings(prev_emb_BxTxH, embed(update.tokens), soft, reset, p_BxT, mask_emb_H)

  def answer(self, generated: np.ndarray, eos_id: int, gen_length: int) -> tuple[np.ndarray, int]:
    eos_at = np.flatnonzero(generated == eos_id)
    return (generated[:eos_at[0]] if eos_at.size else generated), int((generated != eos_id).sum())

  def response(self, generated: np.ndarray, eos_id: int, gen_length: int) -> np.ndarray:
    """dInfer's evaluation text: every generated token but EOS (non-EOS tokens after the first EOS stay)."""
    return generated[generated != eos_id]


@dataclasses.dataclass(frozen=True)
class Threshold(_RuleParams):
  """The official LLaDA2.0 `generate()`: commit masked positions above the threshold (at least the step's
  quota, the most confident first), never revise; a block ends when it holds no mask or after `max_steps`."""
  name: ClassVar[str] = "threshold"
  counts_prefill: ClassVar[bool] = False
  fills_after_eos: ClassVar[bool] = False

  def update(self, x_BxT, active_BxT, x0_BxT, p_BxT, step, knobs: Knobs) -> Update:
    tokens, decoded = threshold_select(x_BxT, x0_BxT, p_BxT, knobs.threshold, knobs.quota[step - 1], self.mask_id)
    finished = ~(tokens == self.mask_id).any(-1) | (step >= self.max_steps)
    return Update(tokens=tokens, decoded=decoded, changed=decoded & (x0_BxT != x_BxT),
                  stop=jnp.where(finished, BLOCK_DONE, NOT_STOPPED).astype(jnp.int32))

  def next_inputs(self, embed, prev_emb_BxTxH, update: Update, active_BxT, p_BxT, mask_emb_H, first: bool):
    return embed(update.tokens)

  def answer(self, generated: np.ndarray, eos_id: int, gen_length: int) -> tuple[np.ndarray, int]:
    """generate()'s `x[P : P + gen_length]`, cut right after the first EOS (included)."""
    answer = generated[:gen_length]
    eos_at = np.flatnonzero(answer == eos_id)
    ids = answer[:eos_at[0] + 1] if eos_at.size else answer
    return ids, len(ids)

  def response(self, generated: np.ndarray, eos_id: int, gen_length: int) -> np.ndarray:
    return self.answer(generated, eos_id, gen_length)[0]


RULES: dict[str, Callable[..., DecodingRule]] = {"spd": SoftParallel, "threshold": Threshold}
