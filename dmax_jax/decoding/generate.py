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

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dmax_jax.config import ModelConfig
from dmax_jax.decoding import cache as kv_cache
from dmax_jax.decoding import rules
from dmax_jax.decoding.options import DecodeOptions, total_length, transfer_schedule
from dmax_jax.model import Transformer, apply_model, embed_tokens


class Trace(NamedTuple):
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


class DecodeOutput(NamedTuple):
  """tokens `[batch, max_len]` (the whole sequence, prompt included), nfe `[batch]` forwards per row,
  stopped_by_eos `[batch]`, trace (or None)."""
  tokens: jax.Array
  nfe: jax.Array
  stopped_by_eos: jax.Array
  trace: Trace | None


class _Static(NamedTuple):
  mode: str
  block_length: int
  gen_length: int
  max_steps: int
  sample: bool
  trace: bool
  eos_id: int
  mask_id: int


class _Block(NamedTuple):
  step: jax.Array     # steps taken in this block (scalar)
  x: jax.Array        # [batch, block] tokens
  emb: jax.Array      # [batch, block, hidden] float32 input embeddings of the next step
  done: jax.Array     # [batch] the row's block is finished (or the row is done)
  nfe: jax.Array      # [batch]
  trace: Trace | None


class _Run(NamedTuple):
  it: jax.Array       # block iteration (scalar)
  tokens: jax.Array   # [batch, max_len]
  cache: Any          # KVCacheView
  done: jax.Array     # [batch]
  eos: jax.Array      # [batch]
  nfe: jax.Array      # [batch]
  trace: Trace | None


def max_length(prompt_width: int, options: DecodeOptions) -> int:
  """Static sequence/cache length of a batch padded to `prompt_width`."""
  b = options.block_length
  return max(total_length(prompt_width, options.gen_length, b), 2 * b)


def max_block_iterations(options: DecodeOptions) -> int:
  """Outer-loop bound: a row decodes ceil(G/B) or ceil(G/B) + 1 blocks (partial prompt block)."""
  return -(-options.gen_length // options.block_length) + 1


def _lm_head(cfg, variables, hidden):
  return Transformer(cfg).apply(variables, hidden, method=Transformer.logits)


def _embed(cfg, variables, ids):
  return embed_tokens(cfg, variables, ids).astype(jnp.float32)


def _empty_trace(iters, steps, batch, block) -> Trace:
  z = lambda dtype, *tail: jnp.zeros((iters, steps, batch) + tail, dtype)
  return Trace(taken=z(bool), block=jnp.zeros((iters, batch), jnp.int32),
               tokens_before=z(jnp.int32, block), tokens_after=z(jnp.int32, block), argmax=z(jnp.int32, block),
               max_prob=z(jnp.float32, block), decoded=z(bool, block), changed=z(bool, block),
               stop=z(jnp.int32))


class _Knobs(NamedTuple):
  """Run-time values of a generation (traced, so changing them does not recompile)."""
  threshold: jax.Array
  converge_threshold: jax.Array
  temperature: jax.Array
  keys: jax.Array       # [batch] typed PRNG keys
  mask_emb: jax.Array   # [hidden] float32 E[mask]
  quota: jax.Array      # [max_steps] threshold-decoding commit schedule


def _forward_block(cfg: ModelConfig, variables, emb_BxTxH, start_B, cache) -> jax.Array:
  """Logits `[batch, block, vocab]` of each row's block at `start[b]`, attending to the cache below it."""
  blk_len, seq_len = emb_BxTxH.shape[1], kv_cache.length(cache)
  bias = kv_cache.attention_bias(seq_len, start_B, jnp.ones((blk_len, blk_len), bool))
  logits, _ = apply_model(cfg, variables, emb_BxTxH, start_B[:, None] + jnp.arange(blk_len), bias,
                          kv_prefix=cache)
  return logits


def _refine(cfg: ModelConfig, st: _Static, variables, k: _Knobs, blk: _Block, logits_BxTxV, active_BxT, it,
            first: bool) -> _Block:
  """One refinement step (of block iteration `it`) for the rows still working on their block."""
  mask_id = st.mask_id
  live = ~blk.done
  nstep = blk.step + 1
  noise = None
  if st.sample:
    noise = jax.vmap(jax.random.fold_in)(k.keys, blk.nfe)
  x0, p = rules.pick_tokens(logits_BxTxV, k.temperature, noise)
  if st.mode == "spd":
    x_new, decoded, changed = rules.spd_select(blk.x, active_BxT, x0, p, k.threshold, mask_id)
    stop = rules.spd_stop(active_BxT, p, changed, nstep, st.max_steps, k.converge_threshold)
    hard = _embed(cfg, variables, x_new)
    soft = active_BxT & (x_new != mask_id)
    reset = jnp.ones_like(soft) if first else (~soft & changed)
    emb = rules.soft_embeddings(blk.emb, hard, soft, reset, p, k.mask_emb)
  else:
    x_new, decoded = rules.threshold_select(blk.x, x0, p, k.threshold, k.quota[blk.step], mask_id)
    changed = decoded & (x0 != blk.x)
    finished = ~(x_new == mask_id).any(-1) | (nstep >= st.max_steps)
    stop = jnp.where(finished, rules.BLOCK_DONE, rules.NOT_STOPPED)
    emb = _embed(cfg, variables, x_new)
  trace = blk.trace
  if trace is not None:
    at = lambda buf, v: buf.at[it, blk.step].set(jnp.where(
        live.reshape(live.shape + (1,) * (v.ndim - 1)), v, buf[it, blk.step]))
    trace = trace._replace(
        taken=trace.taken.at[it, blk.step].set(live), tokens_before=at(trace.tokens_before, blk.x),
        tokens_after=at(trace.tokens_after, x_new), argmax=at(trace.argmax, x0),
        max_prob=at(trace.max_prob, p), decoded=at(trace.decoded, decoded), changed=at(trace.changed, changed),
        stop=at(trace.stop, stop))
  return _Block(step=nstep, x=jnp.where(live[:, None], x_new, blk.x),
                emb=jnp.where(live[:, None, None], emb, blk.emb), done=blk.done | (stop != 0),
                nfe=blk.nfe + live, trace=trace)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate(cfg: ModelConfig, st: _Static, variables, prompt_ids_BxP, prompt_lens_B, threshold,
              converge_threshold, temperature, keys_B) -> DecodeOutput:
  batch, width = prompt_ids_BxP.shape
  blk_len, mask_id, eos_id = st.block_length, st.mask_id, st.eos_id
  options = DecodeOptions(block_length=blk_len, gen_length=st.gen_length)
  seq_len = max_length(width, options)
  iters = max_block_iterations(options)
  pos_S = jnp.arange(seq_len)
  arange_blk = jnp.arange(blk_len)
  prompt_lens_B = prompt_lens_B.astype(jnp.int32)

  padded = jnp.pad(prompt_ids_BxP.astype(jnp.int32), ((0, 0), (0, seq_len - width)))
  tokens = jnp.where(pos_S[None] < prompt_lens_B[:, None], padded, mask_id)
  first_block_B = prompt_lens_B // blk_len
  num_blocks_B = total_length(prompt_lens_B, st.gen_length, blk_len) // blk_len
  row_len_B = num_blocks_B * blk_len
  knobs = _Knobs(threshold=threshold, converge_threshold=converge_threshold, temperature=temperature, keys=keys_B,
                 mask_emb=_embed(cfg, variables, jnp.full((1, 1), mask_id))[0, 0],
                 quota=jnp.asarray(transfer_schedule(blk_len, st.max_steps)))

  cache = kv_cache.init_cache(cfg, batch, seq_len)
  prefill_len = (width // blk_len) * blk_len
  if prefill_len:  # blocks wholly inside the (padded) prompt; stale entries beyond a row's prompt are never read
    block_ids = jnp.arange(prefill_len) // blk_len
    keep = block_ids[None, :] <= block_ids[:, None]
    pre_ids = tokens[:, :prefill_len]
    _, kv = apply_model(cfg, variables, embed_tokens(cfg, variables, pre_ids),
                        jnp.broadcast_to(jnp.arange(prefill_len), pre_ids.shape),
                        kv_cache.attention_bias(0, jnp.zeros((batch,), jnp.int32), keep), return_hidden=True)
    cache = kv_cache.write(cache, kv, jnp.zeros((batch,), jnp.int32))
  # dInfer counts its prefill forward (even when there is no full prompt block); generate() has none.
  nfe = jnp.full((batch,), 1 if st.mode == "spd" else 0, jnp.int32)

  def block_body(run: _Run) -> _Run:
    start_B = jnp.minimum(first_block_B + run.it, num_blocks_B - 1) * blk_len
    live = ~run.done
    x_blk = kv_cache.take_rows(run.tokens, start_B, blk_len)
    active = x_blk == mask_id
    # First step: previous block (final hard tokens) + this block; writes both into the cache.
    win_start = jnp.maximum(start_B - blk_len, 0)
    win_ids = kv_cache.take_rows(run.tokens, win_start, 2 * blk_len)
    win_blocks = jnp.arange(2 * blk_len) // blk_len
    bias = kv_cache.attention_bias(seq_len, win_start, win_blocks[None, :] <= win_blocks[:, None])
    hidden, kv = apply_model(cfg, variables, embed_tokens(cfg, variables, win_ids),
                             win_start[:, None] + jnp.arange(2 * blk_len), bias, kv_prefix=run.cache,
                             return_hidden=True)
    cache = kv_cache.write(run.cache, kv, win_start)
    logits = _lm_head(cfg, variables, kv_cache.take_rows(hidden, start_B - win_start, blk_len))
    trace = run.trace
    if trace is not None:
      trace = trace._replace(block=trace.block.at[run.it].set(start_B // blk_len))
    blk = _Block(step=jnp.int32(0), x=x_blk, emb=_embed(cfg, variables, x_blk), done=run.done, nfe=run.nfe,
                 trace=trace)
    blk = _refine(cfg, st, variables, knobs, blk, logits, active, run.it, first=True)

    def refine(b: _Block) -> _Block:
      logits = _forward_block(cfg, variables, b.emb, start_B, cache)
      return _refine(cfg, st, variables, knobs, b, logits, active, run.it, first=False)

    blk = jax.lax.while_loop(lambda b: (b.step < st.max_steps) & ~b.done.all(), refine, blk)

    tokens = kv_cache.put_rows(run.tokens, jnp.where(live[:, None], blk.x, x_blk), start_B)
    generated = start_B[:, None] + arange_blk >= prompt_lens_B[:, None]
    has_eos = live & ((blk.x == eos_id) & generated).any(-1)
    if st.mode == "spd":  # dInfer fills everything after an EOS block with EOS
      fill = has_eos[:, None] & (pos_S[None] >= start_B[:, None] + blk_len) & (pos_S[None] < row_len_B[:, None])
      tokens = jnp.where(fill, eos_id, tokens)
    last = first_block_B + run.it + 1 >= num_blocks_B
    return _Run(it=run.it + 1, tokens=tokens, cache=cache, done=run.done | has_eos | last,
                eos=run.eos | has_eos, nfe=blk.nfe, trace=blk.trace)

  trace = _empty_trace(iters, st.max_steps, batch, blk_len) if st.trace else None
  run = _Run(it=jnp.int32(0), tokens=tokens, cache=cache, done=jnp.zeros((batch,), bool),
             eos=jnp.zeros((batch,), bool), nfe=nfe, trace=trace)
  run = jax.lax.while_loop(lambda r: ~r.done.all(), block_body, run)
  return DecodeOutput(tokens=run.tokens, nfe=run.nfe, stopped_by_eos=run.eos, trace=run.trace)


def block_step(cfg: ModelConfig, options: DecodeOptions, variables, cache, x_BxT, emb_BxTxH, active_BxT,
               start_B, nfe_B):
  """One later refinement step of a block, the unit of work a generation repeats ~NFE times: forward of
  each row's block `[batch, block]` (input embeddings `emb_BxTxH`) at `start_B` against the static
  cache, then the decoding rule. For AOT compiles and cost estimates (args may be abstract).

  Returns `(tokens [batch, block], next input embeddings [batch, block, hidden], block done [batch])`.
  """
  st = static_options(cfg, options)._replace(trace=False)
  batch = x_BxT.shape[0]
  knobs = _Knobs(threshold=jnp.float32(options.resolved_threshold),
                 converge_threshold=jnp.float32(options.converge_threshold),
                 temperature=jnp.float32(max(options.temperature, 1e-6)), keys=row_keys(0, batch),
                 mask_emb=_embed(cfg, variables, jnp.full((1, 1), st.mask_id))[0, 0],
                 quota=jnp.asarray(transfer_schedule(st.block_length, st.max_steps)))
  blk = _Block(step=jnp.int32(1), x=x_BxT, emb=emb_BxTxH, done=jnp.zeros((batch,), bool), nfe=nfe_B, trace=None)
  out = _refine(cfg, st, variables, knobs, blk, _forward_block(cfg, variables, emb_BxTxH, start_B, cache),
                active_BxT, 0, first=False)
  return out.x, out.emb, out.done


def static_options(cfg: ModelConfig, options: DecodeOptions) -> _Static:
  eos_id, mask_id = options.special_ids(cfg)
  return _Static(mode=options.mode, block_length=options.block_length, gen_length=options.gen_length,
                 max_steps=options.max_steps, sample=options.temperature > 0, trace=options.trace,
                 eos_id=eos_id, mask_id=mask_id)


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
