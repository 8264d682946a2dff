"""The compiled decoder: a whole generation (every prompt, block and step, the KV cache and the stopping rules)
is one jitted program, a `lax.while_loop` whose iteration (a tick) is one forward of the batch.

Layout (LLaDA2.0 / DMax): a prompt of length P sits at positions `0..P-1`, mask ids after it; blocks of
`block_length` are aligned at multiples of it from position 0, so rows of different prompt lengths sit at
different block positions. The batch is a set of slots over a queue of prompts: a slot prefills its prompt's
blocks that lie wholly inside the prompt into its row of the static cache `[layers, batch, max_len, kv_heads,
head_dim]` (a batch-1 forward), then decodes block after block, each row at its own block and step. The first
forward of block k runs the final hard tokens of block k-1 together with block k (2 x block_length positions)
and writes both into the cache (block k-1 final, block k provisional); later steps forward only block k against
the cache, whose entries at or beyond the block are masked out. A tick where some row starts a block is a
two-block forward for the whole batch (the other rows run their block and an unused one, and write nothing);
otherwise it is a one-block forward. A row that finishes (EOS or its last block) writes its result and frees its
slot for the next queued prompt.
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
from dmax_jax.model import LayerKV, apply_model, embed_tokens, lm_head


@struct.dataclass
class Trace:
  """Per-step record; leading axes `[block iteration, step, prompts]` (then `[block_length]`): a prompt's record
  does not depend on the slot that decoded it."""
  taken: jax.Array          # bool: the prompt ran this step
  block: jax.Array          # int32 [iterations, prompts]: absolute block index
  tokens_before: jax.Array
  tokens_after: jax.Array
  argmax: jax.Array
  max_prob: jax.Array       # float32
  decoded: jax.Array        # bool: mask positions filled this step
  changed: jax.Array        # bool
  stop: jax.Array           # int32 stop code (rules.STOP_REASONS), 0 while the block continues


@struct.dataclass
class DecodeOutput:
  """Per prompt: tokens `[prompts, max_len]` (the whole sequence, prompt included), nfe `[prompts]` forwards,
  stopped_by_eos `[prompts]`, trace (or None); batch_forwards: forwards of the whole batch (int32 scalar, the
  prefills not counted; None from the eager reference)."""
  tokens: jax.Array
  nfe: jax.Array
  stopped_by_eos: jax.Array
  trace: Trace | None = None
  batch_forwards: jax.Array | None = None


START_FRACTION = 0.5
"""Default `decode_padded(start_fraction=...)`. On a CPU a two-block forward costs about two block forwards, so
starting blocks together pays: on DMax-tiny's mixed batch 0.5 was the fastest of 0, 0.5 and 1 at batch 8 and 64
(`benchmarks/decode_bench.py --mixed-batch`)."""


@dataclasses.dataclass(frozen=True)
class Static:
  """What the compiled program depends on (hashable): the rule (which holds the mask id), lengths, sampling,
  tracing, the EOS id, the batch size."""
  rule: rules.DecodingRule
  block_length: int
  gen_length: int
  sample: bool
  trace: bool
  eos_id: int
  slots: int  # rows decoded at once (the batch); more prompts wait in a queue
  start_fraction: float = START_FRACTION  # see decode_padded


@struct.dataclass
class Layout:
  """Per-prompt block layout, int32 `[W]`: blocks are aligned at multiples of the block length from
  position 0; a prompt decodes blocks `first_block .. num_blocks - 1`."""
  prompt_lens: jax.Array
  first_block: jax.Array
  num_blocks: jax.Array


@struct.dataclass
class Queue:
  """The prompts of a run, `[W]` rows: sequences `[W, max_len]` (prompt, then mask ids), layouts, sampling keys."""
  tokens: jax.Array
  layout: Layout
  keys: jax.Array


@struct.dataclass
class Inputs:
  """Traced inputs every step reads: the rule's knobs, the temperature, E[mask] `[hidden]` f32."""
  knobs: rules.Knobs
  temperature: jax.Array
  mask_emb: jax.Array


@struct.dataclass
class Slots:
  """The batch: each slot decodes one queued prompt at a time, at its own block and step; `[batch]` unless
  noted."""
  row: jax.Array       # int32: the queued prompt the slot holds
  live: jax.Array      # bool: that prompt is unfinished
  block: jax.Array     # int32: absolute index of its current block
  step: jax.Array      # int32: steps taken in the current block
  starting: jax.Array  # bool: the next forward is the block's first (the previous block and this one)
  tokens: jax.Array    # int32 [batch, max_len]: the sequence, blocks committed so far
  x: jax.Array         # int32 [batch, block]: the current block's tokens
  emb: jax.Array       # f32 [batch, block, hidden]: its input embeddings for the next step
  active: jax.Array    # bool [batch, block]: its positions that started masked
  nfe: jax.Array       # int32: forwards so far
  eos: jax.Array       # bool: EOS generated


@struct.dataclass
class RunState:
  """The loop's carry: one iteration (tick) is one forward of the whole batch."""
  slots: Slots
  cache: LayerKV  # [layers, batch, kv_heads, max_len, head_dim] (or per-layer tuples)
  next_row: jax.Array  # int32 scalar: the next queued prompt to start
  out: DecodeOutput   # [W] rows, each written when its prompt finishes


def max_length(prompt_width: int, options: DecodeOptions) -> int:
  """Static sequence/cache length of a batch padded to `prompt_width`."""
  b = options.block_length
  return max(total_length(prompt_width, options.gen_length, b), 2 * b)


def max_block_iterations(options: DecodeOptions) -> int:
  """Blocks a prompt decodes at most: ceil(G/B) or ceil(G/B) + 1 (partial prompt block)."""
  return -(-options.gen_length // options.block_length) + 1


def _embed(cfg, variables, ids):
  return embed_tokens(cfg, variables, ids).astype(jnp.float32)


def _empty_trace(iters, steps, rows, block) -> Trace:
  z = lambda dtype, *tail: jnp.zeros((iters, steps, rows) + tail, dtype)
  return Trace(taken=z(bool), block=jnp.zeros((iters, rows), jnp.int32),
               tokens_before=z(jnp.int32, block), tokens_after=z(jnp.int32, block), argmax=z(jnp.int32, block),
               max_prob=z(jnp.float32, block), decoded=z(bool, block), changed=z(bool, block),
               stop=z(jnp.int32))


def _inputs(cfg: ModelConfig, st: Static, variables, threshold, converge_threshold, temperature) -> Inputs:
  quota = jnp.asarray(transfer_schedule(st.block_length, st.rule.max_steps))
  mask_emb = _embed(cfg, variables, jnp.full((1, 1), st.rule.mask_id))[0, 0]
  return Inputs(knobs=rules.Knobs(threshold=threshold, converge_threshold=converge_threshold, quota=quota),
                temperature=temperature, mask_emb=mask_emb)


def _queue(st: Static, prompt_ids_WxP, prompt_lens_W, keys_W, seq_len: int) -> Queue:
  width = prompt_ids_WxP.shape[1]
  lens = prompt_lens_W.astype(jnp.int32)
  layout = Layout(prompt_lens=lens, first_block=lens // st.block_length,
                  num_blocks=total_length(lens, st.gen_length, st.block_length) // st.block_length)
  padded = jnp.pad(prompt_ids_WxP.astype(jnp.int32), ((0, 0), (0, seq_len - width)))
  tokens = jnp.where(jnp.arange(seq_len)[None] < lens[:, None], padded, st.rule.mask_id)
  return Queue(tokens=tokens, layout=layout, keys=keys_W)


def _empty_slots(batch: int, seq_len: int, blk_len: int, hidden: int) -> Slots:
  zeros = lambda dtype, *shape: jnp.zeros((batch,) + shape, dtype)
  return Slots(row=zeros(jnp.int32), live=zeros(bool), block=zeros(jnp.int32), step=zeros(jnp.int32),
               starting=zeros(bool), tokens=zeros(jnp.int32, seq_len), x=zeros(jnp.int32, blk_len),
               emb=zeros(jnp.float32, blk_len, hidden), active=zeros(bool, blk_len), nfe=zeros(jnp.int32),
               eos=zeros(bool))


def _prefill_row(cfg: ModelConfig, variables, tokens_S, width: int, blk_len: int, cache, slot):
  """Writes the blocks wholly inside the (padded) prompt of one sequence into row `slot` of the cache, as a
  batch-1 forward (so a row's prefill is the same computation in any batch); stale entries beyond the prompt
  are never read."""
  prefill_len = (width // blk_len) * blk_len
  if not prefill_len:
    return cache
  pre_ids = tokens_S[None, :prefill_len]
  bias = kv_cache.attention_bias(0, jnp.zeros((1,), jnp.int32), kv_cache.block_causal(prefill_len, blk_len))
  _, kv = apply_model(cfg, variables, embed_tokens(cfg, variables, pre_ids), jnp.arange(prefill_len)[None], bias,
                      return_hidden=True)
  return kv_cache.write_row(cache, kv, slot)


def _start_next(cfg: ModelConfig, st: Static, variables, queue: Queue, width: int, run: RunState) -> RunState:
  """Starts the next queued prompt in the first free slot: its prefill, then its first block."""
  slot, row = jnp.argmin(run.slots.live), run.next_row
  s = run.slots
  cache = _prefill_row(cfg, variables, queue.tokens[row], width, st.block_length, run.cache, slot)
  slots = s.replace(row=s.row.at[slot].set(row), live=s.live.at[slot].set(True),
                    block=s.block.at[slot].set(queue.layout.first_block[row]), step=s.step.at[slot].set(0),
                    starting=s.starting.at[slot].set(True), tokens=s.tokens.at[slot].set(queue.tokens[row]),
                    nfe=s.nfe.at[slot].set(int(st.rule.counts_prefill)), eos=s.eos.at[slot].set(False))
  return run.replace(slots=slots, cache=cache, next_row=row + 1)


def _refill(cfg: ModelConfig, st: Static, variables, queue: Queue, width: int, run: RunState) -> RunState:
  """Fills free slots from the queue (continuous batching); it ends at the first row of length 0 (padding)."""
  rows = queue.tokens.shape[0]
  has_work = lambda r: ((~r.slots.live).any() & (r.next_row < rows)
                        & (queue.layout.prompt_lens[jnp.minimum(r.next_row, rows - 1)] > 0))
  return jax.lax.while_loop(has_work, functools.partial(_start_next, cfg, st, variables, queue, width), run)


def _window_forward(cfg: ModelConfig, st: Static, variables, slots: Slots, cache):
  """A forward of two blocks per row, for ticks where some row starts a block: a starting row runs its previous
  block (final hard tokens, to be cached) and its new block; a refining row runs its block and an unused one.
  Returns (logits `[batch, block, vocab]`, this call's keys/values, the rows' cache positions, the slots with
  the starting rows' new block)."""
  blk_len = st.block_length
  start = slots.block * blk_len
  starting = slots.starting & slots.live
  x_new = kv_cache.take_rows(slots.tokens, start, blk_len)
  slots = slots.replace(x=jnp.where(starting[:, None], x_new, slots.x),
                        active=jnp.where(starting[:, None], x_new == st.rule.mask_id, slots.active),
                        emb=jnp.where(starting[:, None, None], _embed(cfg, variables, x_new), slots.emb))
  win_start = jnp.where(starting, jnp.maximum(start - blk_len, 0), start)
  window = _embed(cfg, variables, kv_cache.take_rows(slots.tokens, win_start, 2 * blk_len))
  own_block = jnp.concatenate([slots.emb, jnp.zeros_like(slots.emb)], axis=1)
  win_emb = jnp.where(starting[:, None, None], window, own_block)
  bias = kv_cache.attention_bias(kv_cache.length(cache), win_start, kv_cache.block_causal(2 * blk_len, blk_len))
  hidden, kv = apply_model(cfg, variables, win_emb, win_start[:, None] + jnp.arange(2 * blk_len)[None, :], bias,
                           kv_prefix=cache, return_hidden=True)
  logits = lm_head(cfg, variables, kv_cache.take_rows(hidden, start - win_start, blk_len))
  return logits, kv, win_start, slots


def _block_forward(cfg: ModelConfig, st: Static, variables, slots: Slots, cache):
  """A forward of each row's current block against the cache (nothing written); `_window_forward`'s results."""
  blk_len = st.block_length
  start = slots.block * blk_len
  bias = kv_cache.attention_bias(kv_cache.length(cache), start, jnp.ones((blk_len, blk_len), bool))
  logits, _ = apply_model(cfg, variables, slots.emb, start[:, None] + jnp.arange(blk_len)[None, :], bias,
                          kv_prefix=cache)
  kv = jax.tree.map(lambda c: jnp.zeros(c.shape[:-2] + (2 * blk_len,) + c.shape[-1:], c.dtype), cache)
  return logits, kv, start, slots


def _record(trace: Trace, queue: Queue, slots: Slots, runs_B, update: rules.Update, x0_BxT, p_BxT) -> Trace:
  """Writes one step of the rows that ran it into the trace (indexed by queued prompt, block iteration, step)."""
  rows = jnp.where(runs_B, slots.row, queue.tokens.shape[0])  # out of range: dropped
  it = slots.block - queue.layout.first_block[slots.row]
  def at(buf, v):
    return buf.at[it, slots.step, rows].set(v, mode="drop")
  return trace.replace(taken=at(trace.taken, runs_B), block=trace.block.at[it, rows].set(slots.block, mode="drop"),
                       tokens_before=at(trace.tokens_before, slots.x), tokens_after=at(trace.tokens_after, update.tokens),
                       argmax=at(trace.argmax, x0_BxT), max_prob=at(trace.max_prob, p_BxT),
                       decoded=at(trace.decoded, update.decoded), changed=at(trace.changed, update.changed),
                       stop=at(trace.stop, update.stop))


@jax.named_scope("decode_rule")
def _refine(cfg: ModelConfig, st: Static, variables, inputs: Inputs, keys_B, slots: Slots, logits_BxTxV, runs_B):
  """One refinement step of the block of every row in `runs_B`. Returns (slots after it, the rule's update, x0,
  p)."""
  noise = jax.vmap(jax.random.fold_in)(keys_B, slots.nfe) if st.sample else None
  x0, p = rules.pick_tokens(logits_BxTxV, inputs.temperature, noise)
  update = st.rule.update(slots.x, slots.active, x0, p, slots.step + 1, inputs.knobs)
  emb = st.rule.next_inputs(lambda ids: _embed(cfg, variables, ids), slots.emb, update, slots.active, p,
                            inputs.mask_emb, slots.starting)
  slots = slots.replace(step=slots.step + runs_B, x=jnp.where(runs_B[:, None], update.tokens, slots.x),
                        emb=jnp.where(runs_B[:, None, None], emb, slots.emb), nfe=slots.nfe + runs_B,
                        starting=slots.starting & ~runs_B)
  return slots, update, x0, p


def _end_blocks(st: Static, queue: Queue, s: Slots, out: DecodeOutput, ended_B) -> tuple[Slots, DecodeOutput]:
  """Commits the ended blocks, notes EOS (and fills after it when the rule says so), moves rows to their next
  block, and writes the rows that are finished into the output (freeing their slots)."""
  blk_len = st.block_length
  start = s.block * blk_len
  tokens = kv_cache.put_rows(s.tokens, jnp.where(ended_B[:, None], s.x, kv_cache.take_rows(s.tokens, start, blk_len)),
                             start)
  generated = start[:, None] + jnp.arange(blk_len)[None, :] >= queue.layout.prompt_lens[s.row][:, None]
  has_eos = ended_B & ((s.x == st.eos_id) & generated).any(-1)
  num_blocks = queue.layout.num_blocks[s.row]
  if st.rule.fills_after_eos:
    pos_S = jnp.arange(tokens.shape[1])[None]
    fill = has_eos[:, None] & (pos_S >= start[:, None] + blk_len) & (pos_S < num_blocks[:, None] * blk_len)
    tokens = jnp.where(fill, st.eos_id, tokens)
  finished = has_eos | (ended_B & (s.block + 1 >= num_blocks))
  moves_on = ended_B & ~finished
  slots = s.replace(tokens=tokens, block=s.block + moves_on, step=jnp.where(ended_B, 0, s.step),
                    starting=s.starting | moves_on,
                    live=s.live & ~finished, eos=s.eos | has_eos)
  rows = jnp.where(finished, s.row, queue.tokens.shape[0])  # out of range: dropped
  out = out.replace(tokens=out.tokens.at[rows].set(tokens, mode="drop"), nfe=out.nfe.at[rows].set(s.nfe, mode="drop"),
                    stopped_by_eos=out.stopped_by_eos.at[rows].set(slots.eos, mode="drop"))
  return slots, out


def _tick(cfg: ModelConfig, st: Static, variables, inputs: Inputs, queue: Queue, width: int, run: RunState) -> RunState:
  """One forward of the batch: the two-block forward when a row starts a block, else the block forward; one
  step of the rule for every live row; ended blocks committed; freed slots refilled."""
  s = run.slots
  waiting, refining = s.starting & s.live, s.live & ~s.starting
  window = waiting.any() & ((waiting.sum() >= st.start_fraction * s.live.sum()) | ~refining.any())
  runs = jnp.where(window, s.live, refining)
  forward = lambda branch: functools.partial(branch, cfg, st, variables)
  logits, kv, win_start, s = jax.lax.cond(window, forward(_window_forward), forward(_block_forward), s, run.cache)
  cache = kv_cache.write(run.cache, kv, win_start, waiting & window)
  before = s
  s, update, x0, p = _refine(cfg, st, variables, inputs, queue.keys[s.row], s, logits, runs)
  out = run.out.replace(batch_forwards=run.out.batch_forwards + 1)
  if out.trace is not None:
    out = out.replace(trace=_record(out.trace, queue, before, runs, update, x0, p))
  ended = runs & ((update.stop != 0) | (s.step >= st.rule.max_steps))
  s, out = jax.lax.cond(ended.any(), functools.partial(_end_blocks, st, queue), lambda *a: a[:2], s, out, ended)
  run = run.replace(slots=s, cache=cache, out=out)
  if st.slots < queue.tokens.shape[0]:
    run = _refill(cfg, st, variables, queue, width, run)
  return run


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generate(cfg: ModelConfig, st: Static, variables, prompt_ids_WxP, prompt_lens_W, threshold,
              converge_threshold, temperature, keys_W) -> DecodeOutput:
  rows, width = prompt_ids_WxP.shape
  options = DecodeOptions(block_length=st.block_length, gen_length=st.gen_length)
  seq_len = max_length(width, options)
  queue = _queue(st, prompt_ids_WxP, prompt_lens_W, keys_W, seq_len)
  inputs = _inputs(cfg, st, variables, threshold, converge_threshold, temperature)
  trace = _empty_trace(max_block_iterations(options), st.rule.max_steps, rows, st.block_length) if st.trace else None
  out = DecodeOutput(tokens=queue.tokens, nfe=jnp.zeros((rows,), jnp.int32), stopped_by_eos=jnp.zeros((rows,), bool),
                     trace=trace, batch_forwards=jnp.int32(0))
  run = RunState(slots=_empty_slots(st.slots, seq_len, st.block_length, cfg.hidden_size),
                 cache=kv_cache.init_cache(cfg, st.slots, seq_len), next_row=jnp.int32(0), out=out)
  run = _refill(cfg, st, variables, queue, width, run)
  run = jax.lax.while_loop(lambda r: r.slots.live.any(),
                           functools.partial(_tick, cfg, st, variables, inputs, queue, width), run)
  return run.out


def block_step(cfg: ModelConfig, options: DecodeOptions, variables, cache, x_BxT, emb_BxTxH, active_BxT,
               start_B, nfe_B):
  """One later refinement step of a block, the unit of work a generation repeats ~NFE times: forward of
  each row's block `[batch, block]` (input embeddings `emb_BxTxH`) at `start_B` (a multiple of the block
  length) against the static cache, then the decoding rule. For AOT compiles and cost estimates (args may be
  abstract).

  Returns `(tokens [batch, block], next input embeddings [batch, block, hidden], block done [batch])`.
  """
  batch = x_BxT.shape[0]
  st = dataclasses.replace(static_options(cfg, options, batch), trace=False)
  inputs = _inputs(cfg, st, variables, jnp.float32(options.resolved_threshold),
                   jnp.float32(options.converge_threshold), jnp.float32(max(options.temperature, 1e-6)))
  slots = _empty_slots(batch, 0, options.block_length, cfg.hidden_size).replace(
      live=jnp.ones((batch,), bool), block=start_B // options.block_length, x=x_BxT, emb=emb_BxTxH,
      active=active_BxT, nfe=nfe_B, step=jnp.ones((batch,), jnp.int32))
  logits, _, _, _ = _block_forward(cfg, st, variables, slots, cache)
  slots, update, _, _ = _refine(cfg, st, variables, inputs, row_keys(0, batch), slots, logits, slots.live)
  return slots.x, slots.emb, update.stop != 0


def static_options(cfg: ModelConfig, options: DecodeOptions, slots: int) -> Static:
  eos_id, _ = options.special_ids(cfg)
  return Static(rule=options.rule(cfg), block_length=options.block_length, gen_length=options.gen_length,
                sample=options.temperature > 0, trace=options.trace, eos_id=eos_id, slots=slots)


def row_keys(seed: int, batch: int) -> jax.Array:
  """Default sampling keys: row i uses fold_in(key(seed), i)."""
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(batch))


def decoder_call(cfg: ModelConfig, variables, prompt_ids_WxP, prompt_lens_W, options: DecodeOptions,
                 keys_W: jax.Array | None = None, batch_size: int | None = None,
                 start_fraction: float = START_FRACTION) -> tuple[Any, tuple]:
  """`(jitted decoder with its static arguments bound, its array arguments)`: `fn(*args)` decodes (see
  `decode_padded` for the arguments)."""
  rows = np.shape(prompt_ids_WxP)[0]
  if keys_W is None:
    keys_W = row_keys(0, rows)
  if not 0.0 <= start_fraction <= 1.0:
    raise ValueError(f"start_fraction must be in [0, 1], got {start_fraction}")
  st = dataclasses.replace(static_options(cfg, options, _slots(rows, batch_size)), start_fraction=start_fraction)
  fn = functools.partial(_generate, cfg, st)
  args = (variables, jnp.asarray(prompt_ids_WxP, jnp.int32), jnp.asarray(prompt_lens_W, jnp.int32),
          jnp.float32(options.resolved_threshold), jnp.float32(options.converge_threshold),
          jnp.float32(max(options.temperature, 1e-6)), keys_W)
  return fn, args


def _slots(rows: int, batch_size: int | None) -> int:
  if batch_size is not None and batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  return rows if batch_size is None else min(batch_size, rows)


def lower_decoder(cfg: ModelConfig, variables, prompt_ids_WxP, prompt_lens_W, options: DecodeOptions,
                  keys_W: jax.Array | None = None, batch_size: int | None = None,
                  start_fraction: float = START_FRACTION) -> tuple[jax.stages.Lowered, tuple]:
  """`(lowered program, its array arguments)`: `lowered.compile()(*args)` decodes; for AOT compiles
  and compile-time measurements (abstract `jax.ShapeDtypeStruct` variables work too)."""
  fn, args = decoder_call(cfg, variables, prompt_ids_WxP, prompt_lens_W, options, keys_W, batch_size, start_fraction)
  return _generate.lower(*fn.args, *args), args


def decode_padded(cfg: ModelConfig, variables, prompt_ids_WxP, prompt_lens_W, options: DecodeOptions,
                  keys_W: jax.Array | None = None, batch_size: int | None = None,
                  start_fraction: float = START_FRACTION) -> DecodeOutput:
  """Runs the compiled decoder on padded prompts, `batch_size` rows at a time (default: all at once).

  Each row of the batch moves on alone: a row that finishes a block starts its next block in a later forward
  (see `start_fraction`) while the others keep refining theirs, and a row that finishes its prompt takes the next one from the queue
  (continuous batching), so the batch stays full until the queue is empty.

  Args:
    prompt_ids_WxP: `[prompts, width]` int prompt ids, row w valid up to `prompt_lens_W[w]` (any padding).
    prompt_lens_W: `[prompts]` prompt lengths (1..width); rows of length 0 at the end are padding, never decoded
      (so calls with fewer prompts reuse one compiled program).
    keys_W: typed PRNG keys `[prompts]` for sampling (default `row_keys(0, prompts)`); unused when greedy.
    batch_size: rows decoded at once (static; default all the prompts).
    start_fraction: a row that finished its block waits (idle, not counted) until at least this fraction of
      the live rows waits to start a block too, or none is refining, so rows start blocks together in fewer
      two-block forwards (static; 0 = start at once, 1 = every block in lock-step). Answers do not depend on it.
  Thresholds and temperature are traced values: changing them does not recompile; shapes, batch size, mode,
  block/gen length, steps, greedy-vs-sampling and tracing are static. Returns `[prompts]` rows.
  """
  fn, args = decoder_call(cfg, variables, prompt_ids_WxP, prompt_lens_W, options, keys_W, batch_size, start_fraction)
  return fn(*args)
