"""The rule objects against a numpy transcription of the algorithms (the eager reference's step body before
it used the rule objects), on random blocks: the batch and sampling tests of the decoders share the rules, so
this keeps an independent check of them."""

import jax.numpy as jnp
import numpy as np
import pytest

from dmax_jax.decoding import rules

M, BLOCK, HIDDEN, VOCAB = 30, 8, 4, 31


def numpy_spd_step(x, active, x0, p, step, max_steps, threshold, converge, emb, table):
  """One SPD step on one row: (new tokens, stop?, next input embeddings)."""
  x = x.copy()
  masked = x == M
  low = np.flatnonzero(masked & (p < threshold))
  cand = masked & (np.arange(len(x)) < (low[0] if low.size else len(x)))
  if not cand.any() and masked.any():
    cand[np.flatnonzero(masked)[0]] = True
  update = (cand | (active & ~masked)) if masked.any() else active
  changed = update & (x0 != x)
  x[update] = x0[update]
  stop = bool((p[active] >= converge).all() or not changed.any() or step == max_steps)
  soft = active & (x != M)
  base = table[x] if step == 1 else np.where((~soft & changed)[:, None], table[x], emb)
  pp = p[:, None]
  mixed = pp * table[x0] + (1 - pp) * table[M]
  norm = pp * np.linalg.norm(table[x0], axis=-1, keepdims=True) + (1 - pp) * np.linalg.norm(table[M])
  mixed = mixed * norm / (np.linalg.norm(mixed, axis=-1, keepdims=True) + 1e-6)
  return x, stop, np.where(soft[:, None], mixed, base)


def numpy_threshold_step(x, x0, p, threshold, quota):
  x = x.copy()
  masked = x == M
  conf = np.where(masked, p, -np.inf)
  high = conf > threshold
  if high.sum() >= quota:
    x[high] = x0[high]
  else:
    top = np.argsort(-conf, kind="stable")[:min(quota, masked.sum())]
    x[top] = x0[top]
  return x


def _random_row(rng):
  x = np.where(rng.random(BLOCK) < 0.6, M, rng.integers(0, M, BLOCK))
  active = (x == M) | (rng.random(BLOCK) < 0.5)
  x0 = rng.integers(0, M, BLOCK)
  p = np.round(rng.random(BLOCK).astype(np.float32), 1)  # coarse values: ties and exact threshold hits
  return x, active, x0, p


@pytest.mark.parametrize("seed", range(20))
def test_soft_parallel_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
  x, active, x0, p = _random_row(rng)
  emb = rng.normal(size=(BLOCK, HIDDEN)).astype(np.float32)
  step = int(rng.integers(1, 4))
  knobs = rules.Knobs(threshold=jnp.float32(0.5), converge_threshold=jnp.float32(0.8), quota=jnp.ones(3, jnp.int32))
  rule = rules.SoftParallel(max_steps=3, mask_id=M)
  update = rule.update(x[None], active[None], x0[None], p[None], step, knobs)
  got_emb = rule.next_inputs(lambda ids: jnp.asarray(table)[ids], emb[None], update, active[None], p[None],
                             jnp.asarray(table[M]), first=step == 1)
  want_x, want_stop, want_emb = numpy_spd_step(x, active, x0, p, step, 3, 0.5, 0.8, emb, table)
  assert np.asarray(update.tokens)[0].tolist() == want_x.tolist()
  assert bool(update.stop[0]) == want_stop
  np.testing.assert_allclose(np.asarray(got_emb)[0], want_emb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_threshold_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  x, active, x0, p = _random_row(rng)
  quota = int(rng.integers(1, 4))
  knobs = rules.Knobs(threshold=jnp.float32(0.6), converge_threshold=jnp.float32(0.9),
                      quota=jnp.full((3,), quota, jnp.int32))
  update = rules.Threshold(max_steps=3, mask_id=M).update(x[None], active[None], x0[None], p[None], 1, knobs)
  assert np.asarray(update.tokens)[0].tolist() == numpy_threshold_step(x, x0, p, 0.6, quota).tolist()
