"""Batches of prompts of different lengths, sampling, the single-program property and sharded decoding,
checked against the eager reference decoder (`dmax_jax.decoding.reference`, one prompt at a time)."""


import jax
from jax.extend import core as jex_core
import numpy as np
import pytest

from dmax_jax import hlo, sharding
from dmax_jax.decoding import DecodeOptions, decode_padded, generate, pad_prompts, unpack
from dmax_jax.decoding.cache import init_cache
from dmax_jax.decoding.generate import _generate, decoder_call, lower_decoder, max_length, row_keys
from dmax_jax.decoding.reference import reference_output
from dmax_jax.layers import attention
from dmax_jax.layers.attention import prefix_sizes
from dmax_jax.model import unstack_layers, variable_shardings

# lengths cover P < block, P a multiple of the block, and rows whose first block differs
LENGTHS = (3, 8, 13, 20)


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(7)
  return [rng.integers(0, 250, n).tolist() for n in LENGTHS]


def _options(mode, **kw):
  return DecodeOptions(mode=mode, block_length=8, gen_length=24, threshold=0.5, **kw)


def _reference(cfg, variables, prompts, options, keys=None):
  out = reference_output(cfg, variables, prompts, options, keys)
  return unpack(cfg, out, np.asarray([len(p) for p in prompts]), options)


def _fields(r):
  return r.ids, r.generated, r.nfe, r.num_tokens, r.stopped_by_eos


@pytest.mark.parametrize("mode", ["spd", "threshold"])
def test_batch_rows_equal_reference(tiny_model, prompts, mode):
  cfg, variables = tiny_model
  got = generate(cfg, variables, prompts, _options(mode))
  want = _reference(cfg, variables, prompts, _options(mode))
  assert [_fields(r) for r in got] == [_fields(r) for r in want]
  assert len({r.nfe for r in got}) > 1  # rows finish after different numbers of forwards


def test_batch_rows_equal_decoding_alone(tiny_model, prompts):
  cfg, variables = tiny_model
  batch = generate(cfg, variables, prompts, _options("spd"))
  for prompt, row in zip(prompts, batch):
    alone = generate(cfg, variables, [prompt], _options("spd"), prompt_width=32)[0]
    assert _fields(alone) == _fields(row)


def test_sampling_follows_row_keys(tiny_model, prompts):
  cfg, variables = tiny_model
  options = _options("spd", temperature=0.8)
  keys = row_keys(3, len(prompts))
  got = generate(cfg, variables, prompts, options, keys=keys)
  assert [_fields(r) for r in got] == [_fields(r) for r in _reference(cfg, variables, prompts, options, keys)]
  greedy = generate(cfg, variables, prompts, _options("spd"))
  assert [r.generated for r in got] != [r.generated for r in greedy]


def _generate_with_cut_min(cut_min, *args, **kw):
  """`generate` with attention's smallest prefix cut at `cut_min` keys (compiled anew, and the programs compiled
  with it dropped afterwards)."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(attention, "PREFIX_CUT_MIN", cut_min)
    jax.clear_caches()
    try:
      return generate(*args, **kw)
    finally:
      jax.clear_caches()


def test_cut_cache_prefix_equals_the_whole_cache(tiny_model):
  """Attention over the cache only up to the next of `prefix_sizes` past what is filled, with the smallest cut
  lowered to 64 keys so that a fixture-sized decode uses it: a 40-token prompt (cache of 104) cuts the cache to
  64 keys while it is filled up to that, then attends all of it. Same tokens, steps and confidences as the
  decoder without cuts (which the tests above hold to the eager reference; `tests/test_attend.py` holds the cut
  attention to a numpy softmax)."""
  cfg, variables = tiny_model
  prompts = [np.random.default_rng(0).integers(0, 250, 40).tolist()]
  options = DecodeOptions(mode="spd", block_length=8, gen_length=40, threshold=0.5, trace=True)
  (cut,) = _generate_with_cut_min(64, cfg, variables, prompts, options)
  (whole,) = _generate_with_cut_min(1 << 30, cfg, variables, prompts, options)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(attention, "PREFIX_CUT_MIN", 64)
    assert prefix_sizes(max_length(64, options)) == (64, 104)
  assert {s["block"] for s in cut.trace} == {5, 6, 7, 8, 9}  # filled 40 to 64 (cut to 64), then 72 (all 104)
  assert _fields(cut) == _fields(whole)
  _assert_same_steps(cut.trace, whole.trace)


def _list_schedule(work, slots):
  """Batch forwards needed when prompt i takes `work[i]` forwards, in order, each starting as soon as a row is
  free and no row waiting for another."""
  free_at = [0] * slots
  for w in work:
    free_at[free_at.index(min(free_at))] += w
  return max(free_at)


def _assert_same_steps(got, want):
  """Same steps, tokens and decisions; confidences equal up to float32 rounding (a batch's matmuls round
  differently from a single row's: 1.8e-5 here, as with the lock-step decoder before rows moved on alone)."""
  assert [{k: v for k, v in s.items() if k != "max_prob"} for s in got] == \
      [{k: v for k, v in s.items() if k != "max_prob"} for s in want]
  np.testing.assert_allclose([s["max_prob"] for s in got], [s["max_prob"] for s in want], atol=1e-4)


@pytest.mark.parametrize("mode, batch_size, temperature, start_fraction", [
    ("spd", 3, 0.8, 0.0), ("spd", 4, 0.0, 0.5), ("threshold", 3, 0.0, 1.0),
    # the schedules above greedy, with other batch sizes or the other rule: in `pytest -m slow` (keeps the
    # default suite short)
    pytest.param("spd", 4, 0.0, 0.0, marks=pytest.mark.slow), pytest.param("spd", 3, 0.0, 0.0, marks=pytest.mark.slow), pytest.param("spd", 1, 0.0, 0.0, marks=pytest.mark.slow),
    pytest.param("threshold", 2, 0.0, 0.0, marks=pytest.mark.slow)])
def test_rows_move_on_alone_and_refill(tiny_model, prompts, mode, batch_size, temperature, start_fraction):
  cfg, variables = tiny_model
  options = _options(mode, trace=True, temperature=temperature)
  ids, lens = pad_prompts(prompts, 32)
  out = decode_padded(cfg, variables, ids, lens, options, row_keys(5, len(prompts)), batch_size=batch_size,
                      start_fraction=start_fraction)
  got = unpack(cfg, out, lens, options)
  for prompt, row, key in zip(prompts, got, row_keys(5, len(prompts))):
    alone = generate(cfg, variables, [prompt], options, keys=key[None], prompt_width=32)[0]
    assert _fields(row) == _fields(alone)
    _assert_same_steps(row.trace, alone.trace)
  work = [r.nfe - options.rule(cfg).counts_prefill for r in got]
  assert len(set(work)) > 1
  if start_fraction == 0:  # no row waits for another
    assert int(out.batch_forwards) == _list_schedule(work, batch_size)
  else:  # rows wait to start blocks together
    assert int(out.batch_forwards) > _list_schedule(work, batch_size)


def _primitives(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn.primitive.name, eqn
    for sub in jex_core.jaxprs_in_params(eqn.params):
      yield from _primitives(sub)


def test_generation_is_one_program(tiny_model, prompts):
  cfg, variables = tiny_model
  options = _options("spd")
  ids, lens = pad_prompts(prompts, 32)
  fn, args = decoder_call(cfg, variables, ids, lens, options)
  jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  names = [name for name, _ in _primitives(jaxpr)]
  assert not [n for n in names if "callback" in n or n in ("infeed", "outfeed")]
  (program,) = [eqn.params["jaxpr"].jaxpr for eqn in jaxpr.eqns if eqn.primitive.name == "jit"]
  _, ticks = [eqn for eqn in program.eqns if eqn.primitive.name == "while"]  # the batch filled, then ticks
  assert "cond" in [name for name, _ in _primitives(ticks.params["body_jaxpr"].jaxpr)]  # two-block or block forward

  generate(cfg, variables, prompts, options)
  compiled = _generate._cache_size()
  other = [list(reversed(p)) for p in prompts[:3]] + [[5] * 30]  # same batch size and width bucket
  generate(cfg, variables, other, DecodeOptions(**{**options.__dict__, "threshold": 0.7}))
  assert _generate._cache_size() == compiled


@pytest.mark.parametrize("scan_layers", [True, False])
def test_the_loop_never_copies_the_cache(tiny_model, prompts, scan_layers):
  """jax#40101: a loop that copies its buffers costs O(cache) per forward; only the initial fill may copy."""
  cfg, variables = tiny_model
  cfg = cfg.replace(scan_layers=scan_layers)
  variables = variables if scan_layers else unstack_layers(cfg, variables)
  ids, lens = pad_prompts(prompts, 32)
  lowered, _ = lower_decoder(cfg, variables, ids, lens, _options("spd"), batch_size=2)
  cache = init_cache(cfg, 2, max_length(32, _options("spd")))
  shape = f"f32[{','.join(map(str, jax.tree.leaves(cache.k)[0].shape))}]"
  module = hlo.parse_module(lowered.compile().as_text())
  copies = {name for name, lines in module.bodies.items() if any(f"= {shape}" in l and " copy(" in l for l in lines)}
  assert copies <= {module.entry}, copies
  rows, kv_heads, positions, head_dim = jax.tree.leaves(cache.k)[0].shape[-4:]
  block = _options("spd").block_length
  cache_and_block = [f"f32[{r},{kv_heads},{positions + n * block},{head_dim}]"  # the cache's keys and a call's
                     for r in (1, rows) for n in (1, 2)]
  assert not [l for lines in module.bodies.values() for l in lines if any(f"= {s}" in l for s in cache_and_block)]


@pytest.mark.parametrize("mesh_shape", [{"data": 2, "expert": 2, "tensor": 2},
                                        pytest.param({"expert": 8}, marks=pytest.mark.slow)])
def test_sharded_decoding_equals_single_device(tiny_model, prompts, mesh_shape):
  cfg, variables = tiny_model
  want = generate(cfg, variables, prompts, _options("spd"))
  mesh = sharding.make_mesh(mesh_shape)
  placed = jax.device_put(variables, variable_shardings(cfg, mesh))
  assert placed["params"]["moe_layers"]["layers"]["mlp"]["experts_gate"].sharding.spec[1] == ("expert", "fsdp")
  with sharding.use_mesh(mesh):
    got = generate(cfg, placed, prompts, _options("spd"))
  assert [_fields(r) for r in got] == [_fields(r) for r in want]


@pytest.mark.parametrize("prompt, message", [
    ([], "empty"), ([1, 256], "outside the vocabulary"), ([1, -1], "outside the vocabulary"),
    ([1, 255], "mask token"), ([1] * 32761, "max_position_embeddings")])
def test_bad_prompts_are_rejected(tiny_model, prompt, message):
  cfg, variables = tiny_model
  with pytest.raises(ValueError, match=message):
    generate(cfg, variables, [[1, 2], prompt], _options("spd"))
