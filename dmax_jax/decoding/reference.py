"""Eager reference decoders in the usual PyTorch-port style: a Python loop per block and step, a full
recompute of the whole prefix every step (no KV cache) and a host sync per step; decisions in numpy.

Written directly from the algorithm descriptions (fixture README), independently of the compiled
decoder, so it serves as its oracle (batches, sampling, other prompts) and as the benchmark baseline.
"""

from __future__ import annotations

import jax
import numpy as np

from dmax_jax.config import ModelConfig
from dmax_jax.decoding.generate import DecodeOutput
from dmax_jax.decoding.options import DecodeOptions, total_length, transfer_schedule
from dmax_jax.model import embed_tokens, forward


def _block_causal(length: int, block: int) -> np.ndarray:
  ids = np.arange(length) // block
  return ids[None, :] <= ids[:, None]


def _pick(logits, temperature, key, counter):
  """(x0, p) per position; Gumbel-max with fold_in(key, counter) when temperature > 0."""
  logits = logits.astype(np.float32)
  if temperature > 0:
    logits = logits / np.float32(temperature)
    noise = np.asarray(jax.random.gumbel(jax.random.fold_in(key, counter), logits.shape, np.float32))
    x0 = np.argmax(logits + noise, axis=-1)
  else:
    x0 = np.argmax(logits, axis=-1)
  m = logits.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
  return x0, np.exp(logits[np.arange(len(x0)), x0] - lse)


def reference_decode(cfg: ModelConfig, variables, prompt, options: DecodeOptions, key=None):
  """Decodes one prompt. Returns `(tokens [row_len], nfe, stopped_by_eos)`."""
  eos_id, mask_id = options.special_ids(cfg)
  blk, thr = options.block_length, options.resolved_threshold
  plen = len(prompt)
  total = total_length(plen, options.gen_length, blk)
  x = np.full(total, mask_id, np.int64)
  x[:plen] = prompt
  table = np.asarray(embed_tokens(cfg, variables, np.arange(cfg.vocab_size)[None])[0], np.float32)
  key = jax.random.key(0) if key is None else key
  nfe = 0
  if options.mode == "spd":  # dInfer's prefill forward, always executed and counted
    n = max(plen // blk * blk, blk)
    np.asarray(forward(cfg, variables, inputs_embeds=table[x[None, :n]], attention_mask=_block_causal(n, blk)))
    nfe = 1
  quota = transfer_schedule(blk, options.max_steps)
  eos = False
  for k in range(plen // blk, total // blk):
    s, e = k * blk, (k + 1) * blk
    active = x[s:e] == mask_id
    emb = table[x[s:e]]
    for step in range(options.max_steps):
      masked = x[s:e] == mask_id
      if options.mode == "threshold" and not masked.any():
        break
      inputs = table[x[:e]]
      if options.mode == "spd":
        inputs[s:e] = emb
      logits = np.asarray(forward(cfg, variables, inputs_embeds=inputs[None],
                                  attention_mask=_block_causal(e, blk))[0, s:e])
      x0, p = _pick(logits, options.temperature, key, nfe)
      nfe += 1
      if options.mode == "threshold":
        conf = np.where(masked, p, -np.inf)
        high = conf > thr
        if high.sum() >= quota[step]:
          x[s:e][high] = x0[high]
        else:
          top = np.argsort(-conf, kind="stable")[:min(quota[step], masked.sum())]
          x[s:e][top] = x0[top]
        continue
      low = np.flatnonzero(masked & (p < thr))
      cand = masked & (np.arange(blk) < (low[0] if low.size else blk))
      if not cand.any() and masked.any():
        cand[np.flatnonzero(masked)[0]] = True
      update = (cand | (active & ~masked)) if masked.any() else active
      changed = update & (x0 != x[s:e])
      x[s:e][update] = x0[update]
      if (p[active] >= options.converge_threshold).all() or not changed.any() or step + 1 == options.max_steps:
        break
      soft = active & (x[s:e] != mask_id)
      base = table[x[s:e]] if step == 0 else np.where((~soft & changed)[:, None], table[x[s:e]], emb)
      pp = p[:, None]
      mixed = pp * table[x0] + (1 - pp) * table[mask_id]
      norm = pp * np.linalg.norm(table[x0], axis=-1, keepdims=True) + (1 - pp) * np.linalg.norm(table[mask_id])
      mixed = mixed * norm / (np.linalg.norm(mixed, axis=-1, keepdims=True) + 1e-6)
      emb = np.where(soft[:, None], mixed, base).astype(np.float32)
    gen = np.arange(s, e) >= plen
    if (x[s:e][gen] == eos_id).any():
      eos = True
      if options.mode == "spd":
        x[e:] = eos_id
      break
  return x, nfe, eos


def reference_output(cfg, variables, prompts, options: DecodeOptions, keys=None) -> DecodeOutput:
  """`reference_decode` of every prompt, packed like the compiled decoder's output (no trace)."""
  rows = [reference_decode(cfg, variables, p, options, None if keys is None else keys[i])
          for i, p in enumerate(prompts)]
  width = max(len(r[0]) for r in rows)
  tokens = np.stack([np.pad(r[0], (0, width - len(r[0]))) for r in rows])
  return DecodeOutput(tokens=tokens, nfe=np.asarray([r[1] for r in rows]),
                      stopped_by_eos=np.asarray([r[2] for r in rows]), trace=None)
