"""Checkpoint/resume: a resumed run ends with exactly the params of an uninterrupted one (bit for bit).

Fast test: in-process, a crash after step 4 is simulated by keeping only that checkpoint. Slow test:
`train.py` in a subprocess is SIGKILLed while an async save is in flight, then rerun to the end.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from dmax_jax.training import trainer
from dmax_jax.training.run_config import load_run_config

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(REPO, "configs", "tiny_oput.yaml")


def _overrides(out_dir, model_path, every=2):
  return [f"train.output_dir={out_dir}", "model.config=null", f"model.path={model_path}", "data.max_seq_len=32", "train.global_batch_size=8",
          "train.micro_batch_size=8", "train.epochs=1", f"checkpoint.every_steps={every}", "checkpoint.keep=20",
          "train.tensorboard=false", "data.read_threads=1"]


def _final_params(ckpt_dir, step):
  """Restores the saved params of `step` as numpy arrays."""
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(os.path.join(ckpt_dir, str(step), "state"))
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta.item_metadata.tree)
    return ckptr.restore(os.path.join(ckpt_dir, str(step), "state"), target)["params"]


def _assert_identical(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, fixture_dir):
  """An uninterrupted 8-step run (checkpoints at 2, 4, 6, 8)."""
  out = tmp_path_factory.mktemp("full")
  return trainer.run(load_run_config(TINY, _overrides(out, fixture_dir)), progress=False, echo=lambda s: None)


def test_resume_equals_uninterrupted_run(tmp_path, fixture_dir, full_run):
  full = full_run
  assert full.status == "finished" and full.final_step == full.total_steps == 8
  crashed = tmp_path / "crashed" / "checkpoints"
  os.makedirs(crashed)
  shutil.copytree(os.path.join(full.checkpoint_dir, "4"), crashed / "4")
  resumed = trainer.run(load_run_config(TINY, _overrides(tmp_path / "crashed", fixture_dir)), progress=False,
                        echo=lambda s: None)
  assert (resumed.start_step, resumed.final_step) == (4, 8)
  assert resumed.last_metrics["loss"] == full.last_metrics["loss"]
  _assert_identical(_final_params(resumed.checkpoint_dir, 8), _final_params(full.checkpoint_dir, 8))


def test_resume_onto_a_different_mesh(tmp_path, fixture_dir, full_run):
  """Checkpoint written on fsdp=8, resumed on fsdp=2 x expert=2 x tensor=2: Orbax reshards onto the new
  mesh and the run finishes like the uninterrupted one (float32 reduction-order tolerance)."""
  full = full_run
  moved = tmp_path / "moved" / "checkpoints"
  os.makedirs(moved)
  shutil.copytree(os.path.join(full.checkpoint_dir, "4"), moved / "4")
  overrides = _overrides(tmp_path / "moved", fixture_dir) + ["mesh.fsdp=2", "mesh.expert=2", "mesh.tensor=2"]
  resumed = trainer.run(load_run_config(TINY, overrides), progress=False, echo=lambda s: None)
  assert (resumed.start_step, resumed.final_step) == (4, 8)
  np.testing.assert_allclose(resumed.last_metrics["loss"], full.last_metrics["loss"], rtol=1e-5)
  for x, y in zip(jax.tree.leaves(_final_params(resumed.checkpoint_dir, 8)),
                  jax.tree.leaves(_final_params(full.checkpoint_dir, 8))):
    np.testing.assert_allclose(x, y, atol=1e-4, rtol=0)


def test_nonfinite_loss_stops_without_saving_the_bad_step(tmp_path, fixture_dir):
  """Fixture weights with one NaN in the LM head (same shapes, so the compiled step is reused): the
  run stops at step 1 with status 'nonfinite' and writes no checkpoint of the bad state."""
  from safetensors.numpy import load_file, save_file
  poisoned = tmp_path / "poisoned"
  os.makedirs(poisoned)
  shutil.copyfile(os.path.join(fixture_dir, "config.json"), poisoned / "config.json")
  weights = load_file(os.path.join(fixture_dir, "model.safetensors"))
  weights["lm_head.weight"][3, 5] = np.nan
  save_file(weights, str(poisoned / "model.safetensors"))
  summary = trainer.run(load_run_config(TINY, _overrides(tmp_path / "run", poisoned, every=1)), progress=False,
                        echo=lambda s: None)
  assert summary.status == "nonfinite" and summary.final_step == 1
  assert not [d for d in os.listdir(summary.checkpoint_dir) if d.isdigit()]


def test_export_hf_at_the_end_loads_back(tmp_path, fixture_dir, full_run):
  """Resuming the finished run with `train.export_hf` set only exports; the exported safetensors load
  back to exactly the checkpointed params."""
  from dmax_jax import load_model
  done = tmp_path / "done" / "checkpoints"
  os.makedirs(done)
  shutil.copytree(os.path.join(full_run.checkpoint_dir, "8"), done / "8")
  export = tmp_path / "hf"
  overrides = _overrides(tmp_path / "done", fixture_dir) + [f"train.export_hf={export}"]
  summary = trainer.run(load_run_config(TINY, overrides), progress=False, echo=lambda s: None)
  assert summary.export_dir == str(export) and summary.start_step == summary.final_step == 8
  assert {"config.json", "model.safetensors"} <= set(os.listdir(export))
  _, variables = load_model(str(export))
  _assert_identical(jax.device_get(variables["params"]), _final_params(full_run.checkpoint_dir, 8))


def _train_cmd(out_dir, model_path):
  cmd = [sys.executable, "train.py", "--config", TINY, "--no-progress"]
  for o in _overrides(out_dir, model_path, every=1):
    cmd += ["--set", o]
  return cmd


@pytest.mark.slow
def test_sigkill_during_async_save_then_resume_is_bit_exact(tmp_path, fixture_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  subprocess.run(["timeout", "-s", "KILL", "600"] + _train_cmd(tmp_path / "full", fixture_dir), cwd=REPO, env=env,
                 check=True, capture_output=True)
  ckpt = tmp_path / "killed" / "checkpoints"
  proc = subprocess.Popen(_train_cmd(tmp_path / "killed", fixture_dir), cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  killed_during_save = False
  deadline = time.time() + 600
  while proc.poll() is None and time.time() < deadline:
    names = os.listdir(ckpt) if ckpt.exists() else []
    finished = [n for n in names if n.isdigit()]
    if any("tmp" in n for n in names) and len(finished) >= 2:
      proc.send_signal(signal.SIGKILL)
      killed_during_save = True
      break
    time.sleep(0.0005)
  proc.wait()
  assert killed_during_save, "the run finished before a save could be interrupted"
  subprocess.run(["timeout", "-s", "KILL", "600"] + _train_cmd(tmp_path / "killed", fixture_dir), cwd=REPO, env=env,
                 check=True, capture_output=True)
  _assert_identical(_final_params(str(ckpt), 8), _final_params(str(tmp_path / "full" / "checkpoints"), 8))
