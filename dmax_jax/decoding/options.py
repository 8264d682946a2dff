"""Decoding options, the per-row block layout, prompt-width buckets and host-side validation."""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from dmax_jax.config import ModelConfig
from dmax_jax.errors import InputError

MODES = ("spd", "threshold")
DEFAULT_THRESHOLD = {"spd": 0.5, "threshold": 0.95}
# LLaDA2.0, DMax and DMax-tiny are trained with blocks of this length; others change the answers.
TRAINED_BLOCK_LENGTH = 32


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """What to generate and how.

  mode: "spd" (DMax soft parallel decoding) or "threshold" (the official LLaDA2.0 `generate()`).
  block_length: tokens per block; blocks are aligned at multiples of it from position 0.
  gen_length: tokens to generate after the prompt.
  steps: threshold mode: refinement steps per block (the block is split evenly over them);
    SPD: the step cap per block. None = block_length.
  threshold: commit confidence (None = 0.5 for SPD, 0.95 for threshold decoding).
  converge_threshold: SPD ends a block when every active position's confidence reaches it.
  temperature: 0 = greedy; > 0 samples with Gumbel-max.
  eos_id, mask_id: None = the model config's.
  trace: also record every step (tokens, argmax, confidence) for inspection / visualisation.
  """

  mode: str = "spd"
  block_length: int = TRAINED_BLOCK_LENGTH
  gen_length: int = 256
  steps: int | None = None
  threshold: float | None = None
  converge_threshold: float = 0.9
  temperature: float = 0.0
  eos_id: int | None = None
  mask_id: int | None = None
  trace: bool = False

  def __post_init__(self):
    if self.mode not in MODES:
      raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
    for name in ("block_length", "gen_length"):
      if getattr(self, name) <= 0:
        raise InputError(f"{name} must be positive, got {getattr(self, name)}")
    if self.steps is not None and self.steps <= 0:
      raise InputError(f"steps must be positive, got {self.steps}")
    if self.temperature < 0:
      raise InputError(f"temperature must be >= 0, got {self.temperature}")
    for name in ("threshold", "converge_threshold"):  # confidences: outside [0, 1] a run never stops early
      value = getattr(self, name)
      if value is not None and not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be a confidence in [0, 1], got {value}")

  @property
  def resolved_threshold(self) -> float:
    return DEFAULT_THRESHOLD[self.mode] if self.threshold is None else float(self.threshold)

  @property
  def max_steps(self) -> int:
    """Forwards per block at most. The official generate() caps steps at gen_length // minimal_topk."""
    steps = self.block_length if self.steps is None else self.steps
    return min(steps, self.gen_length) if self.mode == "threshold" else steps

  def rule(self, cfg: ModelConfig):
    """The `rules.DecodingRule` of `mode` for `cfg`'s (or the options') mask id."""
    from dmax_jax.decoding.rules import RULES  # lazy: the CLIs read these options before importing jax
    return RULES[self.mode](max_steps=self.max_steps, mask_id=self.special_ids(cfg)[1])

  def special_ids(self, cfg: ModelConfig) -> tuple[int, int]:
    eos = cfg.eos_token_id if self.eos_id is None else self.eos_id
    if eos is None:
      raise InputError("no eos id: the config has no eos_token_id; pass eos_id")
    return int(eos), int(cfg.mask_token_id if self.mask_id is None else self.mask_id)


def transfer_schedule(block_length: int, steps: int) -> np.ndarray:
  """Tokens committed per step by threshold decoding: the block split evenly, remainder first."""
  quota = np.full((steps,), block_length // steps, np.int32)
  quota[: block_length % steps] += 1
  return quota


def total_length(prompt_len, gen_length: int, block_length: int):
  """Sequence length of a row: prompt + generation rounded up to whole blocks."""
  return -(-(prompt_len + gen_length) // block_length) * block_length


def prompt_bucket(prompt_len: int, block_length: int) -> int:
  """Padded prompt width: block_length * 2^i >= prompt_len (one compile per bucket)."""
  return block_length * 2 ** max(0, math.ceil(math.log2(max(prompt_len, 1) / block_length)))


def validate_prompts(cfg: ModelConfig, prompts: Sequence[Sequence[int]], options: DecodeOptions) -> None:
  """Raises InputError (a ValueError) for empty prompts, unknown or mask token ids and over-long sequences."""
  if not prompts:
    raise InputError("no prompts given")
  _, mask_id = options.special_ids(cfg)
  for i, prompt in enumerate(prompts):
    ids = np.asarray(prompt)
    if ids.size == 0:
      raise InputError(f"prompt {i} is empty")
    bad = ids[(ids < 0) | (ids >= cfg.vocab_size)]
    if bad.size:
      raise InputError(f"prompt {i} has token id(s) {sorted(set(bad.tolist()))[:5]} outside the "
                       f"vocabulary [0, {cfg.vocab_size})")
    if (ids == mask_id).any():
      raise InputError(f"prompt {i} contains the mask token id {mask_id}")
    need = total_length(ids.size, options.gen_length, options.block_length)
    if need > cfg.max_position_embeddings:
      raise InputError(f"prompt {i} is too long: {ids.size} prompt + {options.gen_length} generated "
                       f"tokens (rounded up to blocks of {options.block_length}: {need}) exceed "
                       f"max_position_embeddings={cfg.max_position_embeddings}")
