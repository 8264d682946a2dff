"""Host side: pad a list of prompts into a bucket, run the compiled decoder, and turn its arrays into
per-row answers with each reference's conventions."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dmax_jax.config import ModelConfig
from dmax_jax.decoding import rules
from dmax_jax.decoding.generate import DecodeOutput, decode_padded, row_keys
from dmax_jax.decoding.options import DecodeOptions, prompt_bucket, total_length, validate_prompts


@dataclasses.dataclass
class RowResult:
  """One prompt's generation.

  ids: the answer. SPD: the generated tokens up to (excluding) the first EOS. Threshold: what the
    official `generate()` returns, `x[P : P + gen_length]` cut right after the first EOS (included).
  generated: every token after the prompt up to the row's block-aligned end (EOS fill included).
  nfe: forwards (SPD: the prefill counts once; threshold: the official generate()'s forward calls).
  num_tokens: the TPF numerator (SPD: non-EOS generated tokens, dInfer's count; threshold: len(ids)).
  tpf: num_tokens / nfe.
  trace: one dict per forward of a decoding step (with options.trace), else None.
  """
  ids: list[int]
  generated: list[int]
  nfe: int
  num_tokens: int
  tpf: float
  stopped_by_eos: bool
  trace: list[dict[str, Any]] | None = None


def pad_prompts(prompts: Sequence[Sequence[int]], width: int, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`([batch, width] int32 ids, [batch] lengths)`."""
  ids = np.full((len(prompts), width), pad_id, np.int32)
  for i, p in enumerate(prompts):
    ids[i, :len(p)] = p
  return ids, np.asarray([len(p) for p in prompts], np.int32)


def generate(cfg: ModelConfig, variables, prompts: Sequence[Sequence[int]], options: DecodeOptions = DecodeOptions(),
             seed: int = 0, keys: jax.Array | None = None, prompt_width: int | None = None,
             batch_size: int | None = None, queue_length: int | None = None) -> list[RowResult]:
  """Decodes prompts (lists of token ids, any lengths) in one compiled call, `batch_size` at a time (default
  all at once; a row that finishes takes the next prompt, see `decode_padded`).

  The prompts are padded to `prompt_width` (default: the bucket `block_length * 2^i` of the longest
  prompt) and the queue to `queue_length` rows (empty rows are never decoded), so every call with the same
  queue length, batch size and bucket reuses one compiled program. Prompt i samples with `keys[i]` (default
  fold_in(key(seed), i)). Each prompt's result equals decoding it alone.
  """
  validate_prompts(cfg, prompts, options)
  longest = max(len(p) for p in prompts)
  width = prompt_bucket(longest, options.block_length) if prompt_width is None else prompt_width
  if width < longest:
    raise ValueError(f"prompt_width {width} is shorter than the longest prompt ({longest})")
  rows = max(len(prompts), queue_length or 0)
  ids, lens = pad_prompts(list(prompts) + [[]] * (rows - len(prompts)), width)
  keys = row_keys(seed, rows) if keys is None else jnp.concatenate([keys] + [keys[:1]] * (rows - len(prompts)))
  out = decode_padded(cfg, variables, ids, lens, options, keys, batch_size)
  return unpack(cfg, out, lens[:len(prompts)], options)


def unpack(cfg: ModelConfig, out: DecodeOutput, prompt_lens: np.ndarray, options: DecodeOptions) -> list[RowResult]:
  """Per-row results from the decoder's arrays (one device-to-host transfer)."""
  out = jax.device_get(out)
  eos_id, _ = options.special_ids(cfg)
  rule = options.rule(cfg)
  results = []
  for b, plen in enumerate(prompt_lens.tolist()):
    generated = out.tokens[b, plen:total_length(plen, options.gen_length, options.block_length)]
    ids, num_tokens = rule.answer(generated, eos_id, options.gen_length)
    nfe = int(out.nfe[b])
    results.append(RowResult(ids=ids.tolist(), generated=generated.tolist(), nfe=nfe, num_tokens=num_tokens,
                             tpf=num_tokens / nfe, stopped_by_eos=bool(out.stopped_by_eos[b]),
                             trace=None if out.trace is None else _row_trace(out.trace, b, options)))
  return results


def _row_trace(trace, b: int, options: DecodeOptions) -> list[dict[str, Any]]:
  """The steps row b ran, in order."""
  steps = []
  iters, max_steps = trace.taken.shape[:2]
  for it in range(iters):
    start = int(trace.block[it, b]) * options.block_length
    for s in range(max_steps):
      if not trace.taken[it, s, b]:
        continue
      stop = int(trace.stop[it, s, b])
      steps.append({
          "block": int(trace.block[it, b]), "step": s + 1, "block_start": start,
          "input_block_tokens": trace.tokens_before[it, s, b].tolist(),
          "block_tokens_after": trace.tokens_after[it, s, b].tolist(),
          "argmax": trace.argmax[it, s, b].tolist(), "max_prob": trace.max_prob[it, s, b].tolist(),
          "decoded_positions": (start + np.flatnonzero(trace.decoded[it, s, b])).tolist(),
          "changed_positions": (start + np.flatnonzero(trace.changed[it, s, b])).tolist(),
          "stop_reason": rules.STOP_REASONS.get(stop)})
  return steps
