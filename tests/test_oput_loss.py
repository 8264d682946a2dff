"""OPUT loss vs the official dFactory reference (`oput_loss.json`) and the block-diffusion mask vs case 3."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmax_jax
from dmax_jax.training.loss import block_diffusion_mask, oput_loss_terms


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
  total, count = terms(cfg, variables, noisy, clean, labels, jnp.asarray([True]), oput_case["block_size"], False)
  assert int(count) == oput_case["num_label_positions"]
  assert abs(float(total / count) - oput_case["loss_without_onpolicy"]) < 1e-4
