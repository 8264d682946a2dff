"""Test set-up: 8 simulated CPU devices, full-precision matmuls, rank promotion raises, and the shared fixture."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")  # broadcasting across ranks must be spelled out

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LLADA2_MINI_CONFIG = os.path.join(REPO_ROOT, "configs", "llada2_mini.json")
FIXTURE_DIR = os.path.abspath(
    os.environ.get("DMAX_FIXTURE_DIR",
                   os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures", "tiny_llada2")))


@pytest.fixture(scope="session")
def fixture_dir() -> str:
  """Path of `../shared/fixtures/tiny_llada2`; fails loudly (never skips) when it is missing."""
  if not os.path.isfile(os.path.join(FIXTURE_DIR, "config.json")):
    pytest.fail(f"the reference fixture is missing: expected {FIXTURE_DIR} (shared/fixtures beside the "
                "checkout, or set DMAX_FIXTURE_DIR)")
  return FIXTURE_DIR


@pytest.fixture(scope="session")
def tiny_model(fixture_dir):
  """(config, variables) of the fixture checkpoint, float32."""
  from dmax_jax import ModelConfig
  from dmax_jax.checkpoint.hf_import import load_hf_variables
  cfg = ModelConfig.from_json(fixture_dir)
  return cfg, load_hf_variables(fixture_dir, cfg)
