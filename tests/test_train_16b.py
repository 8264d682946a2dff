"""The 16B OPUT train step AOT-compiles with abstract params on a simulated 32-device CPU mesh."""

import json
import os
import subprocess
import sys

import pytest

from conftest import LLADA2_MINI_CONFIG, REPO_ROOT
from dmax_jax import ModelConfig, flops


@pytest.mark.slow
def test_16b_train_step_compiles_on_fsdp8_expert4(tmp_path):
  out = tmp_path / "aot.json"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=32", JAX_PLATFORMS="cpu")
  run = subprocess.run(["timeout", "-s", "KILL", "900", sys.executable, "benchmarks/train_aot_16b.py",
                        "--moe-impl", "tiled", "--seq-len", "512", "--json", str(out)],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True)
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["devices"] == 32 and report["mesh"]["fsdp"] == 8 and report["mesh"]["expert"] == 4
  cfg = ModelConfig.from_json(LLADA2_MINI_CONFIG)
  # f32 params + Adam mu/nu, sharded 32 ways (embedding/lm_head only over fsdp: at most ~25% extra).
  ideal = 3 * 4 * flops.parameter_count(cfg) / 32
  assert ideal <= report["per_device_bytes"]["arguments"] <= 1.25 * ideal
  # Matmul work: rollout forward + training forward + backward + remat recompute of the 2L tokens
  # is between 3x and 6x the forward FLOPs 2 * N_active * tokens.
  forward = 2 * flops.active_matmul_parameter_count(cfg) * 2 * report["tokens_per_step"]
  assert 3 * forward <= report["matmul_flops_per_step"] <= 6 * forward
