"""The sharded OPUT train step: every mesh gives the one-device result; accumulation; buffers untouched."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from dmax_jax import sharding
from dmax_jax.training.data import make_dataset
from dmax_jax.training.loss import oput_loss
from dmax_jax.training.run_config import DataSection, TrainSection
from dmax_jax.training.step import global_batch, init_state, make_train_step

DATA = os.path.join(os.path.dirname(__file__), "data", "tiny_oput.jsonl")
TRAIN = TrainSection(learning_rate=1e-3, warmup_ratio=0.0, global_batch_size=16, micro_batch_size=8,
                     block_size=16)


@pytest.fixture(scope="module")
def host_batch(tiny_model):
  cfg, _ = tiny_model
  data = DataSection(train_path=DATA, max_seq_len=32, read_threads=1, prefetch=2)
  return next(iter(make_dataset(data, rows_per_process=16, epochs=1, eos_id=cfg.eos_token_id,
                                mask_id=cfg.mask_token_id)))


def one_step(cfg, variables, batch, mesh, train=TRAIN):
  step, tx, abstract = make_train_step(cfg, train, 10, mesh)
  with sharding.use_mesh(mesh):
    state = init_state(variables, tx, abstract)
    new_state, metrics = step(state, global_batch(batch, train.accumulation_steps, mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device_step(tiny_model, host_batch):
  cfg, variables = tiny_model
  return one_step(cfg, variables, host_batch, sharding.make_mesh({"fsdp": 1}, jax.devices()[:1]))


def _assert_params_close(a, b, atol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("mesh_shape", [pytest.param({"fsdp": 8}, marks=pytest.mark.slow),
                                        pytest.param({"data": 2, "fsdp": 2, "expert": 2}, marks=pytest.mark.slow),
                                        {"fsdp": 2, "expert": 2, "tensor": 2},
                                        pytest.param({"data": 8}, marks=pytest.mark.slow)])
def test_sharded_step_equals_single_device(tiny_model, host_batch, single_device_step, mesh_shape):
  cfg, variables = tiny_model
  ref_state, ref_metrics = single_device_step
  state, metrics = one_step(cfg, variables, host_batch, sharding.make_mesh(mesh_shape))
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5)
  # Adam's first update is ~lr * sign(grad): f32 reduction-order noise on tiny gradients can move a
  # parameter by a fraction of lr (1e-3); 2e-5 is 2% of lr.
  _assert_params_close(state["params"], ref_state["params"], atol=2e-5)
  assert int(state["step"]) == 1


def test_step_moves_params_and_keeps_buffers(tiny_model, single_device_step):
  _, variables = tiny_model
  state, metrics = single_device_step
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0 and metrics["lr"] == pytest.approx(1e-3)
  moved = [float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state["params"]),
                                                       jax.tree.leaves(variables["params"]))]
  assert min(moved) > 0
  for a, b in zip(jax.tree.leaves(state["buffers"]), jax.tree.leaves(variables["buffers"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(tiny_model, host_batch, single_device_step):
  """Two micro-batches of 8 == one batch of 16: the loss is averaged over all label tokens."""
  cfg, variables = tiny_model
  ref_state, ref_metrics = single_device_step
  state, metrics = one_step(cfg, variables, host_batch, sharding.make_mesh({"fsdp": 1}, jax.devices()[:1]),
                            dataclasses.replace(TRAIN, micro_batch_size=16))
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
  _assert_params_close(state["params"], ref_state["params"], atol=2e-5)


@pytest.mark.parametrize("weighting", ["tokens", "sequence"])
def test_loss_weighting_over_accumulated_micro_batches(tiny_model, host_batch, weighting):
  """The step's loss over two micro-batches of 8 rows, against each row's own loss (one-row `oput_loss`,
  itself checked against the dFactory reference) combined by hand: token-weighted or the mean of rows."""
  cfg, variables = tiny_model
  train = dataclasses.replace(TRAIN, loss_weighting=weighting)
  _, metrics = one_step(cfg, variables, host_batch, sharding.make_mesh({"fsdp": 1}, jax.devices()[:1]), train)
  row_loss = jax.jit(oput_loss, static_argnums=(0, 6))
  losses = np.asarray([row_loss(cfg, variables, *(host_batch[k][i:i + 1] for k in
                                                  ("noisy_ids", "clean_ids", "labels", "flags")), TRAIN.block_size)
                       for i in range(len(host_batch["flags"]))])
  counts = (np.asarray(host_batch["labels"]) != -100).sum(axis=1)
  assert len(set(counts.tolist())) > 1  # rows of different lengths: the two weightings differ
  expected = (losses * counts).sum() / counts.sum() if weighting == "tokens" else losses[counts > 0].mean()
  np.testing.assert_allclose(metrics["loss"], expected, rtol=2e-5)
  assert metrics["label_tokens"] == counts.sum()
