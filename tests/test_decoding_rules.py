"""The pure pieces of the decoders on literal arrays: token choice, SPD and threshold selection, SPD's stop
rule and soft embeddings, the cache's attention bias and per-row slicing, and partial RoPE."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from dmax_jax.decoding import cache, rules
from dmax_jax.layers.argmax import chunked_argmax, chunked_max_argmax
from dmax_jax.layers.rope import apply_partial_rope, rope_angles
from dmax_jax.model import LayerKV

M = 9  # the mask id of these tests
MIN = float(jnp.finfo(jnp.float32).min)


def test_pick_tokens_greedy_argmax_ties_to_lower_id_and_its_probability():
  logits = jnp.log(jnp.array([[[0.1, 0.6, 0.3], [0.4, 0.4, 0.2]]]))
  x0, p = rules.pick_tokens(logits, 1.0, None)
  assert x0.tolist() == [[1, 0]]
  np.testing.assert_allclose(p, [[0.6, 0.4]], rtol=1e-6)


@pytest.mark.parametrize("vocab", [256, 32768, 1000, 97])
def test_argmax_matches_numpy_with_ties(vocab):
  rng = np.random.default_rng(vocab)
  x = rng.integers(0, 4, (3, 5, vocab)).astype(np.float32)  # many ties, some spanning chunks
  x[0, 0] = 0.0
  x[0, 1, vocab // 2] = 9.0
  x[1, 2] = -np.inf
  got = np.asarray(chunked_argmax(jnp.asarray(x)))
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, np.argmax(x, axis=-1))
  np.testing.assert_array_equal(np.asarray(chunked_max_argmax(jnp.asarray(x))[0]), np.max(x, axis=-1))


@pytest.mark.parametrize("x, active, x0, p, want_x, want_decoded, want_changed", [
    # leftmost run of masked positions at or above the threshold (0.5) is decoded, up to the first low one
    ([M, M, M, M], [1, 1, 1, 1], [1, 2, 3, 4], [.9, .5, .3, .95], [1, 2, M, M], [1, 1, 0, 0], [1, 1, 0, 0]),
    # every masked position below the threshold: the leftmost masked one is decoded anyway
    ([5, M, M, M], [0, 1, 1, 1], [1, 2, 3, 4], [.9, .1, .2, .3], [5, 2, M, M], [0, 1, 0, 0], [0, 1, 0, 0]),
    # decoded active positions are re-predicted (self-revision); inactive ones (prompt) never change
    ([5, 6, M, M], [0, 1, 1, 1], [1, 7, 3, 4], [.9, .9, .9, .1], [5, 7, 3, M], [0, 0, 1, 0], [0, 1, 1, 0]),
    # no masked position left: only revision; an unchanged prediction is not a change
    ([5, 6, 7, 8], [0, 1, 1, 1], [1, 6, 2, 8], [.1, .1, .1, .1], [5, 6, 2, 8], [0, 0, 0, 0], [0, 0, 1, 0]),
])
def test_spd_select(x, active, x0, p, want_x, want_decoded, want_changed):
  new, decoded, changed = rules.spd_select(jnp.array([x]), jnp.array([active], bool), jnp.array([x0]),
                                           jnp.array([p]), 0.5, M)
  assert new.tolist() == [want_x]
  assert decoded.astype(int).tolist() == [want_decoded]
  assert changed.astype(int).tolist() == [want_changed]


def test_spd_select_rows_are_independent():
  x = jnp.array([[M, M], [M, M]])
  new, _, _ = rules.spd_select(x, jnp.ones((2, 2), bool), jnp.array([[1, 2], [3, 4]]),
                               jnp.array([[.9, .9], [.1, .9]]), 0.5, M)
  assert new.tolist() == [[1, 2], [3, M]]


@pytest.mark.parametrize("p, changed, step, want", [
    ([.95, .2], [1, 0], 1, rules.ALL_ACTIVE_CONFIDENT),  # the inactive position's confidence does not count
    ([.5, .9], [0, 0], 1, rules.NO_CHANGE),
    ([.5, .9], [1, 0], 32, rules.MAX_STEPS),
    ([.5, .9], [1, 0], 31, rules.NOT_STOPPED),
    ([.95, .9], [0, 0], 32, rules.ALL_ACTIVE_CONFIDENT),  # confidence is checked first
])
def test_spd_stop(p, changed, step, want):
  stop = rules.spd_stop(jnp.array([[True, False]]), jnp.array([p]), jnp.array([changed], bool), step, 32, 0.9)
  assert stop.tolist() == [want]


def test_soft_embeddings_mix_norm_reset_and_keep():
  hard = jnp.array([[[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [5.0, 5.0]]])  # norms 5, 2, 1
  prev = jnp.full((1, 4, 2), 7.0)
  mask_emb = jnp.array([0.0, -1.0])  # norm 1
  soft = jnp.array([[True, True, False, False]])
  reset = jnp.array([[False, False, True, False]])
  p = jnp.array([[1.0, 0.5, 0.3, 0.3]])
  out = rules.soft_embeddings(prev, hard, soft, reset, p, mask_emb)
  np.testing.assert_allclose(out[0, 0], [3.0, 4.0], rtol=1e-6)       # p = 1: the token's own embedding
  mixed = 0.5 * np.array([0.0, 2.0]) + 0.5 * np.array([0.0, -1.0])   # [0, 0.5], rescaled to norm 0.5*2 + 0.5*1
  np.testing.assert_allclose(out[0, 1], mixed / np.linalg.norm(mixed) * 1.5, rtol=1e-5)
  np.testing.assert_allclose(out[0, 2], [1.0, 0.0])                  # reset: hard embedding
  np.testing.assert_allclose(out[0, 3], [7.0, 7.0])                  # neither: unchanged


@pytest.mark.parametrize("p, quota, want", [
    ([.97, .2, .99, .1], 1, [1, 0, 1, 0]),   # at least `quota` above the threshold: all of them
    ([.5, .2, .6, .1], 1, [0, 0, 1, 0]),     # fewer: the `quota` most confident masked ones
    ([.5, .5, .2, .1], 1, [1, 0, 0, 0]),     # ties go to the lower position
    ([.5, .5, .2, .1], 3, [1, 1, 1, 0]),
])
def test_threshold_select(p, quota, want):
  x = jnp.array([[M, M, M, M]])
  new, transfer = rules.threshold_select(x, jnp.array([[1, 2, 3, 4]]), jnp.array([p]), 0.95, quota, M)
  assert transfer.astype(int).tolist() == [want]
  assert new.tolist() == [[t if w else M for t, w in zip([1, 2, 3, 4], want)]]


def test_threshold_select_never_revises_decoded_tokens():
  new, transfer = rules.threshold_select(jnp.array([[5, M]]), jnp.array([[7, 8]]), jnp.array([[.99, .1]]),
                                         0.95, 1, M)
  assert new.tolist() == [[5, 8]] and transfer.tolist() == [[False, True]]


def test_attention_bias_shows_each_row_its_own_cache_prefix():
  keep_new = jnp.array([[True, False], [True, True]])  # causal among the 2 new tokens
  bias = cache.attention_bias(4, jnp.array([3, 1]), keep_new)
  assert bias.shape == (2, 1, 2, 6)
  visible = np.asarray(bias[:, 0]) == 0
  assert visible.tolist() == [
      [[1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 1, 1]],
      [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]],
  ]
  assert set(np.asarray(bias).ravel().tolist()) == {0.0, MIN}


def test_take_rows_and_put_rows_use_each_rows_offset():
  x = jnp.arange(12).reshape(2, 6)
  assert cache.take_rows(x, jnp.array([1, 4]), 2).tolist() == [[1, 2], [10, 11]]
  out = cache.put_rows(x, jnp.array([[-1, -2], [-3, -4]]), jnp.array([0, 3]))
  assert out.tolist() == [[-1, -2, 2, 3, 4, 5], [6, 7, 8, -3, -4, 11]]


def test_cache_writes_only_the_chosen_rows_and_one_row_from_a_batch_of_one():
  zeros = jnp.zeros((2, 2, 1, 5, 1))  # [layers, batch, kv_heads, positions, head_dim]
  kv = LayerKV(jnp.arange(1, 9.).reshape(2, 2, 1, 2, 1), -jnp.arange(1, 9.).reshape(2, 2, 1, 2, 1))
  out = cache.write(LayerKV(zeros, zeros), kv, jnp.array([1, 3]), rows_B=jnp.array([False, True]))
  assert out.k[:, :, 0, :, 0].tolist() == [[[0, 0, 0, 0, 0], [0, 0, 0, 3, 4]], [[0, 0, 0, 0, 0], [0, 0, 0, 7, 8]]]
  assert out.v[1, 1, 0, :, 0].tolist() == [0, 0, 0, -7, -8]
  per_layer = LayerKV((jnp.zeros((2, 1, 3, 1)),) * 2, (jnp.zeros((2, 1, 3, 1)),) * 2)  # scan_layers=False
  one = LayerKV((jnp.full((1, 1, 2, 1), 5.),) * 2, (jnp.full((1, 1, 2, 1), 6.),) * 2)
  out = cache.write_row(per_layer, one, 1)
  assert [layer[:, 0, :, 0].tolist() for layer in out.k] == [[[0, 0, 0], [5, 5, 0]]] * 2
  stacked = cache.write_row(LayerKV(zeros, zeros), LayerKV(jnp.ones((2, 1, 1, 2, 1)), jnp.ones((2, 1, 1, 2, 1))), 0)
  assert stacked.v[:, :, 0, :, 0].sum(-1).tolist() == [[2, 0], [2, 0]]


def test_partial_rope_rotates_pairs_and_passes_the_rest():
  x = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(1, 1, 1, 6)  # head_dim 6, rotary_dim 4
  cos, sin = rope_angles(jnp.array([[0]]), 4, 10000.0)
  np.testing.assert_allclose(apply_partial_rope(x, cos, sin), x)  # position 0: identity
  cos, sin = rope_angles(jnp.array([[1]]), 4, 10000.0)
  out = np.asarray(apply_partial_rope(x, cos, sin))[0, 0, 0]
  inv_freq = 1.0 / 10000.0 ** (np.arange(0, 4, 2) / 4)  # [1, 0.01]; channel i pairs with i + 2
  for i, f in enumerate(inv_freq):
    a, b = x[0, 0, 0, i], x[0, 0, 0, i + 2]
    np.testing.assert_allclose([out[i], out[i + 2]], [a * np.cos(f) - b * np.sin(f), b * np.cos(f) + a * np.sin(f)],
                               rtol=1e-6)
  np.testing.assert_allclose(out[4:], [5.0, 6.0])


KNOBS = rules.Knobs(threshold=jnp.float32(0.5), converge_threshold=jnp.float32(0.9), quota=jnp.array([2, 1, 1]))


def test_soft_parallel_rule_update_stop_and_answer():
  rule = rules.SoftParallel(max_steps=3, mask_id=M)
  x, active = jnp.array([[5, M, M, M]]), jnp.array([[False, True, True, True]])
  update = rule.update(x, active, jnp.array([[1, 2, 3, 4]]), jnp.array([[.9, .95, .92, .1]]), 1, KNOBS)
  assert update.tokens.tolist() == [[5, 2, 3, M]] and update.stop.tolist() == [rules.NOT_STOPPED]
  update = rule.update(update.tokens, active, jnp.array([[1, 2, 3, 4]]), jnp.array([[.1, .95, .92, .91]]), 2, KNOBS)
  assert update.tokens.tolist() == [[5, 2, 3, 4]] and update.stop.tolist() == [rules.ALL_ACTIVE_CONFIDENT]
  eos = 0
  ids, tokens = rule.answer(np.array([7, 8, eos, 9, eos, eos]), eos, gen_length=6)
  assert ids.tolist() == [7, 8] and tokens == 3  # dInfer counts every non-EOS token, even after the first EOS
  assert rule.response(np.array([7, 8, eos, 9, eos, eos]), eos, gen_length=6).tolist() == [7, 8, 9]  # dInfer's text


def test_rules_take_each_rows_own_step():
  x, active = jnp.array([[M, M, M]] * 2), jnp.ones((2, 3), bool)
  step_B = jnp.array([1, 3])  # quota 2 for row 0, 1 for row 1 (KNOBS.quota)
  update = rules.Threshold(max_steps=3, mask_id=M).update(x, active, jnp.array([[1, 2, 3]] * 2),
                                                          jnp.array([[.2, .4, .3]] * 2), step_B, KNOBS)
  assert update.tokens.tolist() == [[M, 2, 3], [M, 2, M]]
  assert update.stop.tolist() == [rules.NOT_STOPPED, rules.BLOCK_DONE]  # row 1 reached max_steps
  spd = rules.SoftParallel(max_steps=3, mask_id=M)
  update = spd.update(x, active, jnp.array([[1, 2, 3]] * 2), jnp.array([[.9, .1, .1]] * 2), step_B, KNOBS)
  assert update.stop.tolist() == [rules.NOT_STOPPED, rules.MAX_STEPS]
  table = jnp.arange(1., 7.).reshape(6, 1) * jnp.array([[1., 0.]]) + jnp.array([[0., 1.]])
  embed = lambda ids: table[jnp.minimum(ids, 5)]
  prev = jnp.full((2, 3, 2), 7.)
  first_B = jnp.array([True, False])  # row 0: first step of its block resets its hard positions
  emb = spd.next_inputs(embed, prev, update, active & jnp.array([[True, False, True]]), jnp.full((2, 3), .9),
                        table[5], first_B)
  np.testing.assert_array_equal(emb[:, 1], [embed(update.tokens)[0, 1], prev[1, 1]])


def test_threshold_rule_commits_quota_never_revises_and_ends_without_masks():
  rule = rules.Threshold(max_steps=3, mask_id=M)
  x, active = jnp.array([[M, M, M]]), jnp.ones((1, 3), bool)
  # quota 2 at step 1: nothing above 0.5, so the two most confident masked positions
  update = rule.update(x, active, jnp.array([[1, 2, 3]]), jnp.array([[.2, .4, .3]]), 1, KNOBS)
  assert update.tokens.tolist() == [[M, 2, 3]] and update.stop.tolist() == [rules.NOT_STOPPED]
  update = rule.update(update.tokens, active, jnp.array([[6, 7, 8]]), jnp.array([[.9, .9, .9]]), 2, KNOBS)
  assert update.tokens.tolist() == [[6, 2, 3]] and update.stop.tolist() == [rules.BLOCK_DONE]
  embed = lambda ids: jnp.asarray(ids, jnp.float32)[..., None] * jnp.ones((1, 1, 2))
  np.testing.assert_array_equal(rule.next_inputs(embed, None, update, active, None, None, first=False),
                                embed(update.tokens))
  eos = 0
  ids, tokens = rule.answer(np.array([7, eos, 9, eos]), eos, gen_length=3)
  assert ids.tolist() == [7, eos] and tokens == 2  # generate()'s answer: cut after the first EOS, included
  assert rule.response(np.array([7, eos, 9, eos]), eos, gen_length=3).tolist() == [7, eos]


def test_options_pick_the_rule_of_their_mode(tiny_model):
  from dmax_jax.decoding import DecodeOptions
  cfg = dataclasses.replace(tiny_model[0], mask_token_id=M)
  assert DecodeOptions(mode="spd", steps=5).rule(cfg) == rules.SoftParallel(max_steps=5, mask_id=M)
  assert DecodeOptions(mode="threshold", gen_length=4).rule(cfg) == rules.Threshold(max_steps=4, mask_id=M)
