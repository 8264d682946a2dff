"""OPUT loss vs the official dFactory reference (`oput_loss.json`) and the block-diffusion mask vs case 3."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmax_jax
from dmax_jax.training.loss import block_diffusion_mask, oput_loss_terms, weighted_loss_terms


@pytest.fixture(scope="module")
def oput_case(fixture_dir):
  with open(os.path.join(fixture_dir, "oput_loss.json")) as f:
    return json.load(f)


def _inputs(case):
  as_row = lambda k: jnp.asarray([case[k]], jnp.int32)
  return as_row("noisy_ids"), as_row("clean_ids"), as_row("labels")


def test_block_diffusion_mask_matches_dfactory_case3(fixture_dir):
  expected = np.load(os.path.join(fixture_dir, "expected.npz"))["case3_attention_keep"]
  np.testing.assert_array_equal(np.asarray(block_diffusion_mask(32, 8)), expected)


@pytest.mark.parametrize("flag,key", [(True, "loss_onpolicy"), (False, "loss_without_onpolicy")])
def test_oput_loss_matches_reference(tiny_model, oput_case, flag, key):
  cfg, variables = tiny_model
  noisy, clean, labels = _inputs(oput_case)
  loss_fn = jax.jit(dmax_jax.oput_loss, static_argnums=(0, 6))
  loss = loss_fn(cfg, variables, noisy, clean, labels, jnp.asarray([flag]), oput_case["block_size"])
  assert abs(float(loss) - oput_case[key]) < 1e-4, (float(loss), oput_case[key])


def test_oput_loss_flags_are_per_row(tiny_model, oput_case):
  """A batch mixing both flags gives each row's own loss (weighted by its label count)."""
  cfg, variables = tiny_model
  noisy, clean, labels = (jnp.concatenate([x, x]) for x in _inputs(oput_case))
  loss = jax.jit(dmax_jax.oput_loss, static_argnums=(0, 6))(cfg, variables, noisy, clean, labels,
                                                            jnp.asarray([True, False]), oput_case["block_size"])
  expected = (oput_case["loss_onpolicy"] + oput_case["loss_without_onpolicy"]) / 2
  assert abs(float(loss) - expected) < 1e-4


def test_rollout_switch_off_gives_plain_masked_diffusion_loss(tiny_model, oput_case):
  """`on_policy=False` ignores the flags: the SFT ablation equals `loss_without_onpolicy`."""
  cfg, variables = tiny_model
  noisy, clean, labels = _inputs(oput_case)
  terms = jax.jit(oput_loss_terms, static_argnums=(0, 6, 7))
  total, count, _ = terms(cfg, variables, noisy, clean, labels, jnp.asarray([True]), oput_case["block_size"], False)
  assert int(count) == oput_case["num_label_positions"]
  assert abs(float(total / count) - oput_case["loss_without_onpolicy"]) < 1e-4


def test_loss_weightings_on_literal_cross_entropies():
  """Row 0: CE 1, 2, 3 on three label tokens; row 1: CE 6 on one; row 2: no label token."""
  ce = jnp.asarray([[1.0, 2.0, 3.0, 9.0], [6.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
  valid = jnp.asarray([[True, True, True, False], [True, False, False, False], [False] * 4])
  numerator, denominator = weighted_loss_terms(ce, valid, "tokens")
  assert (float(numerator), float(denominator)) == (12.0, 4.0)        # 12 / 4 = 3
  numerator, denominator = weighted_loss_terms(ce, valid, "sequence")
  assert (float(numerator), float(denominator)) == (2.0 + 6.0, 2.0)   # (mean 2 + mean 6) / 2 rows = 4
  with pytest.raises(ValueError, match="weighting"):
    weighted_loss_terms(ce, valid, "rows")
