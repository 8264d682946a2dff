"""Checkpoint conversion HF <-> Orbax: bit-exact round trips, both expert layouts, errors, atomicity, CLI."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dmax_jax.checkpoint import convert, hf_export, orbax_format
from dmax_jax.checkpoint.convert import hf_to_jax, jax_to_hf, parse_size
from dmax_jax.checkpoint.safetensors_io import INDEX_FILE, CheckpointError
from dmax_jax.checkpoint.synthetic import write_synthetic_hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_tensors(directory):
  """{name: array} over every safetensors file of a folder (read by the official safetensors library)."""
  out = {}
  for f in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
    out.update(load_file(f))
  return out


def assert_same_tensors(got_dir, want_dir):
  got, want = read_tensors(got_dir), read_tensors(want_dir)
  assert sorted(got) == sorted(want)
  for name in want:
    assert got[name].dtype == want[name].dtype, name
    assert got[name].shape == want[name].shape, name
    assert got[name].tobytes() == want[name].tobytes(), name


def fixture_config(fixture_dir):
  with open(os.path.join(fixture_dir, "config.json")) as f:
    return json.load(f)


def copy_hf(src, dst, tensors=None, config=None):
  """A copy of an HF folder, optionally with replaced tensors / config fields."""
  os.makedirs(dst)
  with open(os.path.join(src, "config.json")) as f:
    hf = json.load(f)
  hf.update(config or {})
  with open(os.path.join(dst, "config.json"), "w") as f:
    json.dump(hf, f)
  if tensors is not None:
    save_file(tensors, os.path.join(dst, "model.safetensors"))
  else:
    shutil.copyfile(os.path.join(src, "model.safetensors"), os.path.join(dst, "model.safetensors"))
  return dst


@pytest.fixture(scope="module")
def converted_fixture(fixture_dir, tmp_path_factory):
  dst = str(tmp_path_factory.mktemp("conv") / "jax")
  summary = hf_to_jax(fixture_dir, dst, progress=False)
  assert summary.tensors == 82 and summary.bytes > 0
  return dst


def test_converted_layout(converted_fixture, fixture_dir):
  assert sorted(os.listdir(converted_fixture)) == sorted(
      ["config.json", orbax_format.MARKER_FILE, orbax_format.PARAMS_DIR, "README.md"])
  with open(os.path.join(converted_fixture, "config.json"), "rb") as a, \
      open(os.path.join(fixture_dir, "config.json"), "rb") as b:
    assert a.read() == b.read()
  assert orbax_format.read_marker(converted_fixture)["param_dtype"] == "float32"


@pytest.mark.parametrize("merged", [False, True])
def test_roundtrip_fixture_bit_exact(converted_fixture, fixture_dir, tmp_path, merged):
  out = str(tmp_path / "hf")
  jax_to_hf(converted_fixture, out, merged_experts=merged, progress=False)
  assert os.listdir(out).count("model.safetensors") == 1 and INDEX_FILE not in os.listdir(out)
  assert_same_tensors(out, os.path.join(fixture_dir, "merged") if merged else fixture_dir)
  with open(os.path.join(out, "config.json"), "rb") as a, open(os.path.join(fixture_dir, "config.json"), "rb") as b:
    assert a.read() == b.read()  # verbatim: auto_map / architectures kept


def test_merged_input_roundtrips_to_both_layouts(fixture_dir, tmp_path):
  jax_dir = str(tmp_path / "jax")
  hf_to_jax(os.path.join(fixture_dir, "merged"), jax_dir, progress=False)
  jax_to_hf(jax_dir, str(tmp_path / "per_expert"), progress=False)
  jax_to_hf(jax_dir, str(tmp_path / "merged"), merged_experts=True, progress=False)
  assert_same_tensors(str(tmp_path / "per_expert"), fixture_dir)
  assert_same_tensors(str(tmp_path / "merged"), os.path.join(fixture_dir, "merged"))


def test_bf16_sharded_roundtrip(tmp_path):
  with open(os.path.join(REPO, "configs", "llada2_mini.json")) as f:
    hf = {**json.load(f), "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 96, "moe_intermediate_size": 32,
          "num_experts": 16, "mask_token_id": 500, "pad_token_id": 501, "eos_token_id": 501}
  src = str(tmp_path / "src")
  os.makedirs(src)
  # expert_bias in bf16 too: the exporter must give it back in its original dtype
  write_synthetic_hf(src, hf, "bfloat16", buffer_dtype="bfloat16", shard_bytes=200_000)
  with open(os.path.join(src, INDEX_FILE)) as f:
    src_index = json.load(f)
  assert len(set(src_index["weight_map"].values())) > 2
  hf_to_jax(src, str(tmp_path / "jax"), progress=False)
  assert orbax_format.read_marker(str(tmp_path / "jax"))["param_dtype"] == "bfloat16"
  jax_to_hf(str(tmp_path / "jax"), str(tmp_path / "out"), shard_size="200KB", progress=False)
  assert_same_tensors(str(tmp_path / "out"), src)
  with open(os.path.join(tmp_path, "out", INDEX_FILE)) as f:
    out_index = json.load(f)
  assert out_index == src_index
  for shard in glob.glob(os.path.join(tmp_path, "out", "model-*.safetensors")):
    assert os.path.getsize(shard) < 200_000 + 20_000  # data plus its header


def test_dtype_conversion(converted_fixture, fixture_dir, tmp_path):
  jax_to_hf(converted_fixture, str(tmp_path / "bf16"), dtype="bfloat16", progress=False)
  got, want = read_tensors(str(tmp_path / "bf16")), read_tensors(fixture_dir)
  bias = "model.layers.1.mlp.gate.expert_bias"
  assert got[bias].dtype == np.float32 and np.array_equal(got[bias], want[bias])
  emb = "model.word_embeddings.weight"
  assert str(got[emb].dtype) == "bfloat16"
  np.testing.assert_array_equal(got[emb], want[emb].astype(got[emb].dtype))
  with open(os.path.join(tmp_path, "bf16", "config.json")) as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"


def test_variables_to_hf_matches_fixture(tiny_model, fixture_dir, tmp_path):
  cfg, variables = tiny_model
  convert.variables_to_hf(variables, cfg, str(tmp_path / "hf"), source=fixture_dir)
  assert_same_tensors(str(tmp_path / "hf"), fixture_dir)


def test_hf_to_jax_dtype_cast(fixture_dir, tmp_path):
  hf_to_jax(fixture_dir, str(tmp_path / "jax"), dtype="bfloat16", progress=False)
  assert orbax_format.read_marker(str(tmp_path / "jax"))["param_dtype"] == "bfloat16"
  jax_to_hf(str(tmp_path / "jax"), str(tmp_path / "hf"), progress=False)  # stored dtype by default
  got, want = read_tensors(str(tmp_path / "hf")), read_tensors(fixture_dir)
  for name, w in want.items():
    if name.endswith("expert_bias"):
      assert got[name].dtype == np.float32 and np.array_equal(got[name], w)
    else:
      assert str(got[name].dtype) == "bfloat16", name
      np.testing.assert_array_equal(got[name], w.astype(got[name].dtype))


def test_parse_size_and_shard_plan():
  assert parse_size("5GB") == 5 * 10**9 and parse_size("500MB") == 5 * 10**8 and parse_size("2GiB") == 2**31
  with pytest.raises(ValueError, match="invalid size"):
    parse_size("5 parsecs")
  plan = hf_export.plan_shards({"a": 4, "b": 4, "c": 9, "d": 1}, 8)
  assert plan == [["a", "b"], ["c"], ["d"]]


# ---- errors ---------------------------------------------------------------------------------------

def _bad_input_cases(fixture_dir, tmp_path):
  tensors = load_file(os.path.join(fixture_dir, "model.safetensors"))
  name = "model.layers.2.mlp.experts.5.up_proj.weight"
  missing = {k: v for k, v in tensors.items() if k != name}
  extra = {**tensors, "model.layers.1.mlp.experts.9.up_proj.weight": tensors[name]}
  wrong = {**tensors, name: tensors[name][:, :-1].copy()}
  yield "missing", copy_hf(fixture_dir, str(tmp_path / "missing"), missing), name
  yield "unexpected", copy_hf(fixture_dir, str(tmp_path / "extra"), extra), "experts.9.up_proj"
  yield "shape", copy_hf(fixture_dir, str(tmp_path / "shape"), wrong), name
  yield "config", copy_hf(fixture_dir, str(tmp_path / "config"), config={"moe_intermediate_size": 16}), \
      "does config.json match"
  trunc = copy_hf(fixture_dir, str(tmp_path / "trunc"))
  with open(os.path.join(trunc, "model.safetensors"), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(trunc, "model.safetensors")) - 100)
  yield "truncated", trunc, "truncated safetensors file"
  shard = str(tmp_path / "shard")
  os.makedirs(shard)
  write_synthetic_hf(shard, fixture_config(fixture_dir), "float32", shard_bytes=300_000)
  os.remove(os.path.join(shard, "model-00002-of-00003.safetensors"))
  yield "index shard", shard, "model-00002-of-00003.safetensors"


def test_bad_inputs_fail_clearly_and_leave_nothing(fixture_dir, tmp_path):
  for kind, src, needle in _bad_input_cases(fixture_dir, tmp_path / "inputs"):
    out = tmp_path / f"out_{kind.replace(' ', '_')}"
    with pytest.raises(CheckpointError) as err:
      hf_to_jax(src, str(out), progress=False)
    assert needle in str(err.value), (kind, str(err.value))
    assert not out.exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["inputs"]  # no staging leftovers


def test_failure_midway_leaves_no_output(converted_fixture, tmp_path, monkeypatch):
  calls = []

  def failing_write(self, name, array):
    calls.append(name)
    if len(calls) == 30:
      raise OSError("disk full (injected)")
    return real_write(self, name, array)

  real_write = hf_export.SafetensorsWriter.write
  monkeypatch.setattr(hf_export.SafetensorsWriter, "write", failing_write)
  with pytest.raises(OSError, match="injected"):
    jax_to_hf(converted_fixture, str(tmp_path / "hf"), shard_size="100KB", progress=False)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["mid-weights", "after-weights"])
def test_failure_in_hf_to_jax_leaves_no_output(fixture_dir, tmp_path, monkeypatch, where):
  calls = []

  def fail(*args, **kwargs):
    calls.append(1)
    if where == "after-weights" or len(calls) == 10:
      raise RuntimeError("crash (injected)")
    return real_fill(*args, **kwargs)

  real_fill = convert.HFCheckpoint.fill
  if where == "mid-weights":
    monkeypatch.setattr(convert.HFCheckpoint, "fill", fail)
  else:
    monkeypatch.setattr(orbax_format, "write_marker", fail)
  with pytest.raises(RuntimeError, match="injected"):
    hf_to_jax(fixture_dir, str(tmp_path / "jax"), progress=False)
  assert list(tmp_path.iterdir()) == []


def test_overwrite_policy(converted_fixture, tmp_path):
  out = tmp_path / "hf"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  with pytest.raises(FileExistsError, match="--overwrite"):
    jax_to_hf(converted_fixture, str(out), progress=False)
  assert (out / "keep.txt").exists()
  jax_to_hf(converted_fixture, str(out), overwrite=True, progress=False)
  assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
  with pytest.raises(ValueError, match="same folder"):
    hf_to_jax(converted_fixture, converted_fixture, overwrite=True)


def test_staged_directory_renames_only_on_success(tmp_path):
  with convert.staged_directory(str(tmp_path / "d")) as staging:
    assert os.path.basename(staging).startswith(".d.partial-")
    open(os.path.join(staging, "f"), "w").close()
  assert sorted(os.listdir(tmp_path / "d")) == ["f"]


# ---- CLI ------------------------------------------------------------------------------------------

def run_cli(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, "convert_weights.py"), *args],
                        capture_output=True, text=True, timeout=120)


def test_cli_roundtrip(fixture_dir, tmp_path):
  r = run_cli("hf-to-jax", fixture_dir, str(tmp_path / "jax"), "--no-progress")
  assert r.returncode == 0, r.stderr
  assert "82 tensors" in r.stdout
  r = run_cli("jax-to-hf", str(tmp_path / "jax"), str(tmp_path / "hf"), "--merged-experts",
              "--shard-size", "300KB")
  assert r.returncode == 0, r.stderr
  assert "jax-to-hf" in r.stderr  # tqdm progress bar
  assert os.path.exists(tmp_path / "hf" / INDEX_FILE)
  assert_same_tensors(str(tmp_path / "hf"), os.path.join(fixture_dir, "merged"))
  r = run_cli("jax-to-hf", str(tmp_path / "jax"), str(tmp_path / "hf"))
  assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr


def test_cli_help_explains_every_flag():
  for command, flags in (("hf-to-jax", ["--dtype", "--overwrite", "--no-progress"]),
                         ("jax-to-hf", ["--merged-experts", "--shard-size", "--dtype", "--overwrite"])):
    r = run_cli(command, "--help")
    assert r.returncode == 0
    for flag in flags:
      assert flag in r.stdout
