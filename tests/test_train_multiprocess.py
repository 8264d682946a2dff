"""Two processes on localhost (2 simulated CPU devices each) train exactly like one process with 4."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = os.path.join(REPO, "configs", "tiny_oput.yaml")


def _cmd(out_dir, model_path, *extra):
  sets = [f"train.output_dir={out_dir}", "model.config=null", f"model.path={model_path}", "data.max_seq_len=32",
          "train.global_batch_size=8", "train.micro_batch_size=4", "train.max_steps=4", "checkpoint.every_steps=2",
          "train.tensorboard=false", "data.read_threads=1"]
  cmd = ["timeout", "-s", "KILL", "600", sys.executable, "train.py", "--config", TINY, "--no-progress"]
  for s in sets:
    cmd += ["--set", s]
  return cmd + list(extra)


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")


def _losses(out_dir):
  with open(os.path.join(out_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, fixture_dir):
  single = subprocess.run(_cmd(tmp_path / "single", fixture_dir), cwd=REPO, env=_env(4), capture_output=True,
                          text=True)
  assert single.returncode == 0, single.stderr[-3000:]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(_cmd(tmp_path / "multi", fixture_dir, "--coordinator-address", f"127.0.0.1:{port}",
                                 "--num-processes", "2", "--process-id", str(i)),
                            cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate() for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  expected, got = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert len(expected) == len(got) == 4
  # Same rows in every micro-batch; only the order of rows inside the sums differs.
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  saved = sorted(int(d) for d in os.listdir(tmp_path / "multi" / "checkpoints") if d.isdigit())
  assert saved == [2, 4]
