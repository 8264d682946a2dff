"""Eager reference decoder in the usual PyTorch-port style: a Python loop per block and step, a full
recompute of the whole prefix every step (no KV cache) and a host sync per step.

It shares only the decoding rules (`rules.DecodingRule`, themselves tested on literal arrays and against the
official traces) with the compiled decoder; its block layout, prefix recompute and loop are written
independently, so it is the compiled decoder's oracle (batches, sampling, other prompts) and the benchmark
baseline.
"""

from __future__ import annotations

import jax
import numpy as np

from dmax_jax.config import ModelConfig
from dmax_jax.decoding import rules
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
  rule, blk = options.rule(cfg), options.block_length
  knobs = rules.Knobs(threshold=np.float32(options.resolved_threshold),
                      converge_threshold=np.float32(options.converge_threshold),
                      quota=transfer_schedule(blk, rule.max_steps))
  plen = len(prompt)
  total = total_length(plen, options.gen_length, blk)
  x = np.full(total, mask_id, np.int64)
  x[:plen] = prompt
  table = np.asarray(embed_tokens(cfg, variables, np.arange(cfg.vocab_size)[None])[0], np.float32)
  embed = lambda ids: table[np.asarray(ids)]
  key = jax.random.key(0) if key is None else key
  nfe = 0
  if rule.counts_prefill:  # dInfer's prefill forward, always executed and counted
    n = max(plen // blk * blk, blk)
    np.asarray(forward(cfg, variables, inputs_embeds=table[x[None, :n]], attention_mask=_block_causal(n, blk)))
    nfe = 1
  eos = False
  for k in range(plen // blk, total // blk):
    s, e = k * blk, (k + 1) * blk
    active = x[s:e] == mask_id
    emb = table[x[s:e]]
    for step in range(1, rule.max_steps + 1):
      inputs = table[x[:e]]
      inputs[s:e] = emb
      logits = np.asarray(forward(cfg, variables, inputs_embeds=inputs[None],
                                  attention_mask=_block_causal(e, blk))[0, s:e])
      x0, p = _pick(logits, options.temperature, key, nfe)
      nfe += 1
      update = rule.update(x[None, s:e], active[None], x0[None], p[None], step, knobs)
      emb = np.asarray(rule.next_inputs(embed, emb[None], update, active[None], p[None], table[mask_id],
                                        first=step == 1))[0]
      x[s:e] = np.asarray(update.tokens)[0]
      if int(update.stop[0]):
        break
    gen = np.arange(s, e) >= plen
    if (x[s:e][gen] == eos_id).any():
      eos = True
      if rule.fills_after_eos:
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
