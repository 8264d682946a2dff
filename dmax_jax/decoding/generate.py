"""The compiled decoder: a whole generation (every block, every step, the KV cache and the stopping
rules) is one jitted program of two nested `lax.while_loop`s (blocks outer, steps inner).

Layout (LLaDA2.0 / DMax): row b holds its prompt at positions `0..P_b-1`, mask ids after it; blocks of
`block_length` are aligned at multiples of it from position 0, so rows of different prompt lengths sit
at different block positions; all rows advance one block per outer iteration. Blocks wholly inside the
prompt are prefilled once into a static cache `[layers, batch, max_len, kv_heads, head_dim]`. The first
forward of block k runs the final hard tokens of block k-1 together with block k (2 x block_length
positions) and writes both into the cache (block k-1 final, block k provisional); later steps of the
block forward only block k against the cache, whose entries at or beyond the block are masked out.
A row whose block is finished waits (frozen, not counted) until every row of the batch has finished
that block; a row that is done (EOS or last block) stops counting forwards.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dmax_jax.config import ModelConfig
from dmax_jax.decoding import cache as kv_cache
from dmax_jax.decoding import rules
from dmax_jax.decoding.options import DecodeOptions, total_length, transfer_schedule
from dmax_jax.model import KVCacheView, apply_model, embed_tokens, lm_head


@struct.dataclass
class Trace:
  """Per-step record; leading axes `[block iteration, step]`, then `[batch]` (and `[block_length]`)."""
  taken: jax.Array          # bool: the row ran this step
  block: jax.Array          # int32 [iterations, batch]: absolute block index
  tokens_before: jax.Array
  tokens_after: jax.Array
  argmax: jax.Array
  max_prob: jax.Array       # float32
  decoded: jax.Array        # bool: mask positions filled this step
  changed: jax.Array        # bool
  stop: jax.Array           # int32 stop code (rules.STOP_REASONS), 0 while the block continues


@struct.dataclass
class DecodeOutput:
  """tokens `[batch, max_len]` (the whole sequence, prompt included), nfe `[batch]` forwards per row,
  stopped_by_eos `[batch]`, trace (or None)."""
  tokens: jax.Array
  nfe: jax.Array
  stopped_by_eos: jax.Array
  trace: Trace | None = None


@dataclasses.dataclass(frozen=True)
class Static:
  """What the compiled program depends on (hashable): the rule (which holds the mask id), lengths, sampling,
  tracing, the EOS id."""
  rule: rules.DecodingRule
  block_length: int
  gen_length: int
  sample: bool
  trace: bool
  eos_id: int


@struct.dataclass
class Layout:
  """Per-row block layout of a generation, `[batch]` int32: blocks are aligned at multiples of the block
  length from position 0; a row decodes blocks `first_block .. num_blocks - 1`."""
  prompt_lens: jax.Array
  first_block: jax.Array
  num_blocks: jax.Array


@struct.dataclass
class Inputs:
  """Traced inputs every step reads: the rule's knobs, sampling keys `[batch]`, E[mask] `[hidden]` f32."""
  knobs: rules.Knobs
  temperature: jax.Array
  keys: jax.Array
  mask_emb: jax.Array


@struct.dataclass
class BlockState:
  """The inner loop's carry: refinement of each row's current block."""
  step: jax.Array     # int32 scalar: steps taken in this block
  x: jax.Array        # int32 [batch, block]: the block's tokens
  emb: jax.Array      # f32 [batch, block, hidden]: input embeddings of the next step
  done: jax.Array     # bool [batch]: the row's block is finished (or the row is done)
  nfe: jax.Array      # int32 [batch]: forwards so far
  trace: Trace | None


@struct.dataclass
class RunState:
  """The outer loop's carry: one iteration per block."""
  it: jax.Array       # int32 scalar: block iteration
  tokens: jax.Array   # int32 [batch, max_len]
  cache: KVCacheView  # [layers, batch, max_len, kv_heads, head_dim] (or per-layer tuples)
  done: jax.Array     # bool [batch]: EOS generated or last block decoded
  eos: jax.Array      # bool [batch]
  nfe: jax.Array      # int32 [batch]
  trace: Trace | None


def max_length(prompt_width: int, options: DecodeOptions) -> int:
  """Static sequence/cache length of a batch padded to `prompt_width`."""
  b = options.block_length
  return max(total_length(prompt_width, options.gen_length, b), 2 * b)


def max_block_iterations(options: DecodeOptions) -> int:
  """Outer-loop bound: a row decodes ceil(G/B) or ceil(G/B) + 1 blocks (partial prompt block)."""
  return -(-options.gen_length // options.block_length) + 1


def _embed(cfg, variables, ids):
  return embed_tokens(cfg, variables, ids).astype(jnp.float32)


def _empty_trace(iters, steps, batch, block) -> Trace:
  z = lambda dtype, *tail: jnp.zeros((iters, steps, batch) + tail, dtype)
  return Trace(taken=z(bool), block=jnp.zeros((iters, batch), jnp.int32),
               tokens_before=z(jnp.int32, block), tokens_after=z(jnp.int32, block), argmax=z(jnp.int32, block),
               max_prob=z(jnp.float32, block), decoded=z(bool, block), changed=z(bool, block),
               stop=z(jnp.int32))


def _inputs(cfg: ModelConfig, st: Static, variables, threshold, converge_threshold, temperature, keys_B) -> Inputs:
  quota = jnp.asarray(transfer_schedule(st.block_length, st.rule.max_steps))
  mask_emb = _embed(cfg, variables, jnp.full((1, 1), st.rule.mask_id))[0, 0]
  return Inputs(knobs=rules.Knobs(threshold=threshold, converge_threshold=converge_threshold, quota=quota),
                temperature=temperature, keys=keys_B, mask_emb=mask_emb)


def _forward_block(cfg: ModelConfig, variables, emb_BxTxH, start_B, cache) -> jax.Array:
  """Logits `[batch, block, vocab]` of each row's block at `start[b]`, attending to the cache below it."""
  blk_len, seq_len = emb_BxTxH.shape[1], kv_cache.length(cache)
  bias = kv_cache.attention_bias(seq_len, start_B, jnp.ones((blk_len, blk_len), bool))
  logits, _ = apply_model(cfg, variables, emb_BxTxH, start_B[:, None] + jnp.arange(blk_len)[None, :], bias,
                          kv_prefix=cache)
  return logits


def _record(trace: Trace, it, step, live_B, x_BxT, update: rules.Update, x0_BxT, p_BxT) -> Trace:
  """Writes one step of the rows that ran it into the trace."""
  def at(buf, v):
    return buf.at[it, step].set(jnp.where(live_B.reshape(live_B.shape + (1,) * (v.ndim - 1)), v, buf[it, step]))
  return trace.replace(taken=trace.taken.at[it, step].set(live_B), tokens_before=at(trace.tokens_before, x_BxT),
                       tokens_after=at(trace.tokens_after, update.tokens), argmax=at(trace.argmax, x0_BxT),
                       max_prob=at(trace.max_prob, p_BxT), decoded=at(trace.decoded, update.decoded),
                       changed=at(trace.changed, update.changed), stop=at(trace.stop, update.stop))


def _refine(cfg: ModelConfig, st: Static, variables, inputs: Inputs, blk: BlockState, logits_BxTxV, active_BxT,
            it, first: bool) -> BlockState:
  """One refinement step (of block iteration `it`) for the rows still working on their block."""
  live = ~blk.done
  noise = jax.vmap(jax.random.fold_in)(inputs.keys, blk.nfe) if st.sample else None
  x0, p = rules.pick_tokens(logits_BxTxV, inputs.temperature, noise)
  update = st.rule.update(blk.x, active_BxT, x0, p, blk.step + 1, inputs.knobs)
  emb = st.rule.next_inputs(lambda ids: _embed(cfg, variables, ids), blk.emb, update, active_BxT, p,
                            inputs.mask_emb, first)
  trace = None if blk.trace is None else _record(blk.trace, it, blk.step, live, blk.x, update, x0, p)
  return BlockState(step=blk.step + 1, x=jnp.where(live[:, None], update.tokens, blk.x),
                    emb=jnp.where(live[:, None, None], emb, blk.emb), done=blk.done | (update.stop != 0),
                    nfe=blk.nfe + live, trace=trace)


def _prefill(cfg: ModelConfig, variables, tokens_BxS, width: int, blk_len: int, cache):
  """Writes the blocks wholly inside the (padded) prompt into the cache; stale entries beyond a row's
  prompt are never read."""
  prefill_len = (width // blk_len) * blk_len
  if not prefill_len:
    return cache
  batch = tokens_BxS.shape[0]
  block_ids = jnp.arange(prefill_len) // blk_len
  pre_ids = tokens_BxS[:, :prefill_len]
  bias = kv_cache.attention_bias(0, jnp.zeros((batch,), jnp.int32), block_ids[None, :] <= block_ids[:, None])
  _, kv = apply_model(cfg, variables, embed_tokens(cfg, variables, pre_ids),
                      jnp.broadcast_to(jnp.arange(prefill_len), pre_ids.shape), bias, return_hidden=True)
  return kv_cache.write(cache, kv, jnp.zeros((batch,), jnp.int32))


def _first_forward(cfg: ModelConfig, variables, run: RunState, start_B, blk_len: int):
  """The block's first forward: the previous block (final hard tokens) and this block together, both written
  into the cache. Returns (logits `[batch, block, vocab]` of this block, the cache)."""
  win_start = jnp.maximum(start_B - blk_len, 0)
  win_ids = kv_cache.take_rows(run.tokens, win_start, 2 * blk_len)
  win_blocks = jnp.arange(2 * blk_len) // blk_len
  bias = kv_cache.attention_bias(kv_cache.length(run.cache), win_start, win_blocks[None, :] <= win_blocks[:, None])
  hidden, kv = apply_model(cfg, variables, embed_tokens(cfg, variables, win_ids),
                           win_start[:, None] + jnp.arange(2 * blk_len)[None, :], bias, kv_prefix=run.cache,
                           return_hidden=True)
  logits = lm_head(cfg, variables, kv_cache.take_rows(hidden, start_B - win_start, blk_len))
  return logits, kv_cache.write(run.cache, kv, win_start)


def _end_block(st: Static, layout: Layout, run: RunState, blk: BlockState, start_B, x_BxT, cache) -> RunState:
  """Commits each live row's block, notes EOS (and fills after it when the rule says so), ends finished rows."""
  live = ~run.done
  blk_len = st.block_length
  tokens = kv_cache.put_rows(run.tokens, jnp.where(live[:, None], blk.x, x_BxT), start_B)
  generated = start_B[:, None] + jnp.arange(blk_len)[None, :] >= layout.prompt_lens[:, None]
  has_eos = live & ((blk.x == st.eos_id) & generated).any(-1)
  if st.rule.fills_after_eos:
    pos_S = jnp.arange(tokens.shape[1])[None]
    fill = has_eos[:, None] & (pos_S >= start_B[:, None] + blk_len) & (pos_S < layout.num_blocks[:, None] * blk_len)
    tokens = jnp.where(fill, st.eos_id, tokens)
  last = layout.first_block + run.it + 1 >= layout.num_blocks
  return RunState(it=run.it + 1, tokens=tokens, cache=cache, done=run.done | has_eos | last, eos=run.eos | has_eos,
                  nfe=blk.nfe, trace=blk.trace)


def _block_iteration(cfg: ModelConfig, st: Static, variables, inputs: Inputs, layout: Layout,
                     run: RunState) -> RunState:
  """One block of every row: the first forward, then refinement steps until each row's block is done."""
  blk_len = st.block_length
  start_B = jnp.minimum(layout.first_block + run.it, layout.num_blocks - 1) * blk_len
  x_BxT = kv_cache.take_rows(run.tokens, start_B, blk_len)
  active = x_BxT == st.rule.mask_id
  logits, cache = _first_forward(cfg, variables, run, start_B, blk_len)
  trace = None if run.trace is None else run.trace.replace(block=run.trace.block.at[run.it].set(start_B // blk_len))
  blk = BlockState(step=jnp.int32(0), x=x_BxT, emb=_embed(cfg, variables, x_BxT), done=run.done, nfe=run.nfe,
                   trace=trace)
  blk = _refine(cfg, st, variables, inputs, blk, logits, active, run.it, first=True)

  def refine(b: BlockState) -> BlockState:
    logits = _forward_block(cfg, variables, b.emb, start_B, cache)
    return _refine(cfg, st, variables, inputs, b, logits, active, run.it, first=False)

  blk = jax.lax.while_loop(lambda b: (b.step < st.rule.max_steps) & ~b.done.all(), refine, blk)
  return _end_block(st, layout, run, blk, start_B, x_BxT, cache)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate(cfg: ModelConfig, st: Static, variables, prompt_ids_BxP, prompt_lens_B, threshold,
              converge_threshold, temperature, keys_B) -> DecodeOutput:
  batch, width = prompt_ids_BxP.shape
  options = DecodeOptions(block_length=st.block_length, gen_length=st.gen_length)
  seq_len = max_length(width, options)
  prompt_lens_B = prompt_lens_B.astype(jnp.int32)
  layout = Layout(prompt_lens=prompt_lens_B, first_block=prompt_lens_B // st.block_length,
                  num_blocks=total_length(prompt_lens_B, st.gen_length, st.block_length) // st.block_length)
  padded = jnp.pad(prompt_ids_BxP.astype(jnp.int32), ((0, 0), (0, seq_len - width)))
  tokens = jnp.where(jnp.arange(seq_len)[None] < prompt_lens_B[:, None], padded, st.rule.mask_id)
  inputs = _inputs(cfg, st, variables, threshold, converge_threshold, temperature, keys_B)
  cache = _prefill(cfg, variables, tokens, width, st.block_length, kv_cache.init_cache(cfg, batch, seq_len))
  trace = _empty_trace(max_block_iterations(options), st.rule.max_steps, batch, st.block_length) if st.trace else None
  run = RunState(it=jnp.int32(0), tokens=tokens, cache=cache, done=jnp.zeros((batch,), bool),
                 eos=jnp.zeros((batch,), bool), nfe=jnp.full((batch,), int(st.rule.counts_prefill), jnp.int32),
                 trace=trace)
  run = jax.lax.while_loop(lambda r: ~r.done.all(),
                           functools.partial(_block_iteration, cfg, st, variables, inputs, layout), run)
  return DecodeOutput(tokens=run.tokens, nfe=run.nfe, stopped_by_eos=run.eos, trace=run.trace)


def block_step(cfg: ModelConfig, options: DecodeOptions, variables, cache, x_BxT, emb_BxTxH, active_BxT,
               start_B, nfe_B):
  """One later refinement step of a block, the unit of work a generation repeats ~NFE times: forward of
  each row's block `[batch, block]` (input embeddings `emb_BxTxH`) at `start_B` against the static
  cache, then the decoding rule. For AOT compiles and cost estimates (args may be abstract).

  Returns `(tokens [batch, block], next input embeddings [batch, block, hidden], block done [batch])`.
  """
  st = dataclasses.replace(static_options(cfg, options), trace=False)
  batch = x_BxT.shape[0]
  inputs = _inputs(cfg, st, variables, jnp.float32(options.resolved_threshold),
                   jnp.float32(options.converge_threshold), jnp.float32(max(options.temperature, 1e-6)),
                   row_keys(0, batch))
  blk = BlockState(step=jnp.int32(1), x=x_BxT, emb=emb_BxTxH, done=jnp.zeros((batch,), bool), nfe=nfe_B, trace=None)
  out = _refine(cfg, st, variables, inputs, blk, _forward_block(cfg, variables, emb_BxTxH, start_B, cache),
                active_BxT, 0, first=False)
  return out.x, out.emb, out.done


def static_options(cfg: ModelConfig, options: DecodeOptions) -> Static:
  eos_id, _ = options.special_ids(cfg)
  return Static(rule=options.rule(cfg), block_length=options.block_length, gen_length=options.gen_length,
                sample=options.temperature > 0, trace=options.trace, eos_id=eos_id)


def row_keys(seed: int, batch: int) -> jax.Array:
  """Default sampling keys: row i uses fold_in(key(seed), i)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(batch))


def decoder_call(cfg: ModelConfig, variables, prompt_ids_BxP, prompt_lens_B, options: DecodeOptions,
                 keys_B: jax.Array | None = None) -> tuple[Any, tuple]:
  """`(jitted decoder with its static arguments bound, its array arguments)`: `fn(*args)` decodes (see
  `decode_padded` for the arguments)."""
  batch = np.shape(prompt_ids_BxP)[0]
  if keys_B is None:
    keys_B = row_keys(0, batch)
  fn = functools.partial(_generate, cfg, static_options(cfg, options))
  args = (variables, jnp.asarray(prompt_ids_BxP, jnp.int32), jnp.asarray(prompt_lens_B, jnp.int32),
          jnp.float32(options.resolved_threshold), jnp.float32(options.converge_threshold),
          jnp.float32(max(options.temperature, 1e-6)), keys_B)
  return fn, args


def lower_decoder(cfg: ModelConfig, variables, prompt_ids_BxP, prompt_lens_B, options: DecodeOptions,
                  keys_B: jax.Array | None = None) -> tuple[jax.stages.Lowered, tuple]:
  """`(lowered program, its array arguments)`: `lowered.compile()(*args)` decodes; for AOT compiles
  and compile-time measurements (abstract `jax.ShapeDtypeStruct` variables work too)."""
  _, args = decoder_call(cfg, variables, prompt_ids_BxP, prompt_lens_B, options, keys_B)
  return _generate.lower(cfg, static_options(cfg, options), *args), args


def decode_padded(cfg: ModelConfig, variables, prompt_ids_BxP, prompt_lens_B, options: DecodeOptions,
                  keys_B: jax.Array | None = None) -> DecodeOutput:
  """Runs the compiled decoder on a padded batch.

  Args:
    prompt_ids_BxP: `[batch, width]` int prompt ids, row b valid up to `prompt_lens_B[b]` (any padding).
    prompt_lens_B: `[batch]` prompt lengths (1..width).
    keys_B: typed PRNG keys `[batch]` for sampling (default `row_keys(0, batch)`); unused when greedy.
  Thresholds and temperature are traced values: changing them does not recompile; shapes, mode,
  block/gen length, steps, greedy-vs-sampling and tracing are static.
  """
  fn, args = decoder_call(cfg, variables, prompt_ids_BxP, prompt_lens_B, options, keys_B)
  return fn(*args)
