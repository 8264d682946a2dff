"""`dmax_jax.load_model`: HF and converted checkpoints, dtype casting, sharded placement on a mesh."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

import dmax_jax
from dmax_jax import sharding
from dmax_jax.checkpoint.convert import hf_to_jax
from dmax_jax.checkpoint.hf_import import variable_paths
from dmax_jax.checkpoint.safetensors_io import CheckpointError
from dmax_jax.checkpoint.synthetic import write_synthetic_hf
from dmax_jax.model import logical_partition_specs


@pytest.fixture(scope="module")
def converted_dir(fixture_dir, tmp_path_factory):
  dst = str(tmp_path_factory.mktemp("load") / "jax")
  hf_to_jax(fixture_dir, dst, progress=False)
  return dst


@pytest.fixture(scope="module")
def expected(fixture_dir):
  return np.load(os.path.join(fixture_dir, "expected.npz"))


def leaves(variables):
  return {p: np.asarray(v) for p, v in variable_paths(variables).items()}


@pytest.mark.parametrize("layout", ["hf", "hf_merged", "converted"])
def test_logits_match_fixture(layout, fixture_dir, converted_dir, expected):
  path = {"hf": fixture_dir, "hf_merged": os.path.join(fixture_dir, "merged"), "converted": converted_dir}[layout]
  cfg, variables = dmax_jax.load_model(path)
  assert cfg.param_dtype == "float32"
  logits = dmax_jax.forward(cfg, variables, input_ids=expected["case1_input_ids"])
  np.testing.assert_allclose(np.asarray(logits), expected["case1_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("source", ["hf", "converted"])
def test_mesh_placement_and_dtype(source, fixture_dir, converted_dir):
  mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
  cfg, variables = dmax_jax.load_model(fixture_dir if source == "hf" else converted_dir,
                                       dtype="bfloat16", mesh=mesh)
  assert cfg.param_dtype == "bfloat16"
  want = variable_paths(sharding.logical_to_sharding(logical_partition_specs(cfg), mesh))
  reference = leaves(dmax_jax.load_model(fixture_dir)[1])
  for path, leaf in variable_paths(variables).items():
    assert leaf.sharding == want[path], path
    assert leaf.dtype == (np.float32 if path.startswith("buffers/") else jax.numpy.bfloat16), path
    np.testing.assert_array_equal(np.asarray(leaf), reference[path].astype(leaf.dtype))
  experts = variables["params"]["moe_layers"]["layers"]["mlp"]["experts_gate"]
  # [layers, experts, embed, width]: experts over expert x fsdp (4 ways), width over tensor
  assert len(experts.addressable_shards) == 8 and experts.addressable_shards[0].data.shape == (2, 2, 64, 16)


def test_restore_onto_different_meshes(converted_dir):
  mesh_a, mesh_b = sharding.make_mesh({"fsdp": 8}), sharding.make_mesh({"data": 2, "expert": 4})
  a = variable_paths(dmax_jax.load_model(converted_dir, mesh=mesh_a)[1])
  b = variable_paths(dmax_jax.load_model(converted_dir, mesh=mesh_b)[1])
  assert all(np.array_equal(np.asarray(a[p]), np.asarray(b[p])) for p in a)
  experts_a, experts_b = a["params/moe_layers/layers/mlp/experts_up"], b["params/moe_layers/layers/mlp/experts_up"]
  assert experts_a.sharding.mesh == mesh_a and experts_b.sharding.mesh == mesh_b
  assert experts_a.addressable_shards[0].data.shape == (2, 1, 64, 32)  # experts split over fsdp (8 ways)
  assert experts_b.addressable_shards[0].data.shape == (2, 2, 64, 32)  # experts split over expert (4 ways)


def test_bf16_sharded_hf_keeps_its_dtype(fixture_dir, tmp_path):
  with open(os.path.join(fixture_dir, "config.json")) as f:
    write_synthetic_hf(str(tmp_path), json.load(f), "bfloat16", shard_bytes=100_000)
  loaded_cfg, variables = dmax_jax.load_model(str(tmp_path))
  assert loaded_cfg.param_dtype == "bfloat16"
  assert variables["params"]["embedding"].dtype == jax.numpy.bfloat16
  assert variables["buffers"]["moe_layers"]["layers"]["mlp"]["expert_bias"].dtype == np.float32
  hf_to_jax(str(tmp_path), str(tmp_path / "jax"), progress=False)
  restored = leaves(dmax_jax.load_model(str(tmp_path / "jax"))[1])
  assert all(np.array_equal(restored[p], v) for p, v in leaves(variables).items())


def test_converted_config_mismatch_names_the_variable(converted_dir, tmp_path):
  bad = str(tmp_path / "bad")
  shutil.copytree(converted_dir, bad)
  with open(os.path.join(bad, "config.json")) as f:
    hf = json.load(f)
  hf["num_experts"] = 16
  with open(os.path.join(bad, "config.json"), "w") as f:
    json.dump(hf, f)
  bias = "buffers/moe_layers/layers/mlp/expert_bias"
  with pytest.raises(CheckpointError, match=rf"variable {bias} has shape \(2, 8\)"):
    dmax_jax.load_model(bad)


def test_hf_region_reads_only_what_it_needs(fixture_dir, monkeypatch):
  from dmax_jax.checkpoint.hf_import import HFCheckpoint
  from dmax_jax.checkpoint.safetensors_io import SafetensorsFile
  ckpt = HFCheckpoint(fixture_dir, dmax_jax.ModelConfig.from_json(fixture_dir))
  path = "params/moe_layers/layers/mlp/experts_up"
  full = ckpt.read(path)
  read = []
  real_read = SafetensorsFile.read
  monkeypatch.setattr(SafetensorsFile, "read", lambda self, name: read.append(name) or real_read(self, name))
  region = (slice(1, 2), slice(2, 6), slice(None), slice(8, 24))
  np.testing.assert_array_equal(ckpt.read(path, region=region), full[1:2, 2:6, :, 8:24])
  assert sorted(read) == [f"model.layers.2.mlp.experts.{e}.up_proj.weight" for e in range(2, 6)]


def test_compute_dtype_is_separate_from_the_parameter_dtype(fixture_dir):
  from dmax_jax import load_model
  cfg, variables = load_model(fixture_dir, dtype="float32", compute_dtype="bfloat16", moe_impl="tiled")
  assert (cfg.param_dtype, cfg.dtype, cfg.moe_impl) == ("float32", "bfloat16", "tiled")
  assert variables["params"]["lm_head"].dtype == np.float32
