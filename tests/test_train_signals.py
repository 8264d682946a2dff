"""SIGTERM / Ctrl-C during training: the step finishes, a checkpoint is written, the rerun ends bit-exactly
where an uninterrupted run ends, and metrics.jsonl holds every step once. A resume whose config changes
the objective is refused."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dmax_jax.config import ConfigError
from dmax_jax.training import trainer
from dmax_jax.training.run_config import load_run_config
from test_train_resume import REPO, TINY, _assert_identical, _final_params

STEPS = 24


def _overrides(out_dir, model_path, *extra):
  return [f"train.output_dir={out_dir}", "model.config=null", f"model.path={model_path}", "data.max_seq_len=32",
          "train.global_batch_size=8", "train.micro_batch_size=8", "train.epochs=3", "checkpoint.every_steps=100",
          "train.log_every=1", "train.tensorboard=false", "data.read_threads=1", *extra]


def _run(out_dir, fixture_dir, *extra, **kwargs):
  return trainer.run(load_run_config(TINY, _overrides(out_dir, fixture_dir, *extra)), progress=False,
                     echo=lambda s: None, **kwargs)


def _logged_steps(out_dir):
  with open(os.path.join(out_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f]


def _signal_when_logged(out_dir, signum):
  """Sends `signum` to this process as soon as the run has logged its first step."""
  path = os.path.join(out_dir, "metrics.jsonl")

  def watch():
    deadline = time.time() + 300
    while time.time() < deadline:
      if os.path.exists(path) and os.path.getsize(path) > 0:
        os.kill(os.getpid(), signum)
        return
      time.sleep(0.001)

  threading.Thread(target=watch, daemon=True).start()


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_signal_saves_the_step_and_the_rerun_is_bit_exact(tmp_path, fixture_dir, signum):
  full = _run(tmp_path / "full", fixture_dir)
  out = tmp_path / "stopped"
  handler = signal.getsignal(signum)
  _signal_when_logged(str(out), signum)
  stopped = _run(out, fixture_dir)
  assert signal.getsignal(signum) is handler  # the run's handler is gone again
  assert stopped.status == "interrupted" and stopped.signal_exit_code == 128 + signum
  assert 1 <= stopped.final_step < STEPS
  assert os.path.isdir(os.path.join(stopped.checkpoint_dir, str(stopped.final_step)))
  resumed = _run(out, fixture_dir)
  assert (resumed.status, resumed.start_step, resumed.final_step) == ("finished", stopped.final_step, STEPS)
  _assert_identical(_final_params(resumed.checkpoint_dir, STEPS), _final_params(full.checkpoint_dir, STEPS))
  assert _logged_steps(out) == list(range(1, STEPS + 1))
  # The same run directory with another objective is refused; other changes need a flag.
  with pytest.raises(ConfigError, match=r"train.on_policy: True -> False.*new train.output_dir"):
    _run(out, fixture_dir, "train.on_policy=false")
  with pytest.raises(ConfigError, match=rf"train.max_steps: None -> {STEPS}.*--allow-config-change"):
    _run(out, fixture_dir, f"train.max_steps={STEPS}")
  again = _run(out, fixture_dir, f"train.max_steps={STEPS}", allow_config_change=True)
  assert (again.status, again.start_step, again.final_step) == ("finished", STEPS, STEPS)
  assert _logged_steps(out) == list(range(1, STEPS + 1))  # a mesh change needs no flag: tests/test_train_config.py


@pytest.mark.slow
def test_sigterm_to_train_py(tmp_path, fixture_dir):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "train.py", "--config", TINY, "--no-progress"]
  for o in _overrides(tmp_path, fixture_dir):
    cmd += ["--set", o]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline and not (metrics.exists() and metrics.stat().st_size):
    time.sleep(0.005)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert time.time() - sent < 60 and "Traceback" not in err
  assert "stopped by SIGTERM after step" in out + err
  step = int((out + err).split("stopped by SIGTERM after step ")[1].split(":")[0])
  assert os.path.isdir(tmp_path / "checkpoints" / str(step))
