"""The official DMax soft parallel decoder and LLaDA2 model, imported from a DMax checkout
(github.com/czg1225/DMax, `dInfer/python/dinfer`), running on a CPU in float32.

The decoder is what DMax's evaluation runs: `BlockDiffusionLLM.naive_batching_generate_uniform` (blocks of
the block-diffusion iterator, prefix KV cache) with `ThresholdParallelDecoder.decode_uniform` (the SPD rule),
greedy. The model is dInfer's `LLaDA2MoeModelLM` with SDPA attention, its vLLM layers replaced by
`vllm_standins`. Only the modules needed are imported (the package `__init__`s pull in serving and
SGLang code).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import types

import torch

from . import vllm_standins


def import_dinfer(dmax_repo: str) -> types.SimpleNamespace:
  """The dInfer modules of a DMax checkout, without running the packages' `__init__` files."""
  root = os.path.join(dmax_repo, "dInfer", "python", "dinfer")
  if not os.path.isfile(os.path.join(root, "decoding", "generate_uniform.py")):
    raise SystemExit(f"error: {dmax_repo} is not a DMax checkout (no dInfer/python/dinfer/decoding/generate_uniform.py)")
  vllm_standins.install()
  for package in ("dinfer", "dinfer.decoding", "dinfer.model"):
    if package not in sys.modules:
      module = types.ModuleType(package)
      module.__path__ = [os.path.join(root, *package.split(".")[1:])]
      sys.modules[package] = module
  names = dict(generate="dinfer.decoding.generate_uniform", strategy="dinfer.decoding.parallel_strategy",
               utils="dinfer.decoding.utils", modeling="dinfer.model.modeling_llada2_moe",
               configuration="dinfer.model.configuration_llada2_moe")
  modules = types.SimpleNamespace(**{key: importlib.import_module(name) for key, name in names.items()})
  _accept_consolidated_cache(modules.utils.KVCache)
  return modules


def _accept_consolidated_cache(kv_cache_class) -> None:
  """dInfer's SPD loop re-wraps a consolidated cache tensor `[layers, 2, B, heads, S, D]` in `KVCache`, whose
  constructor asserts `len(x) % 2 == 0`: meant for its list form `[k0, v0, k1, v1, ...]`, it fails for a
  tensor of an odd layer count (the fixture's 3 layers). Skip the check for a tensor; nothing else changes."""
  original = kv_cache_class.__init__
  if getattr(original, "accepts_tensor", False):
    return

  def __init__(self, past_key_values, backend="vllm", *args, **kwargs):
    if backend == "vllm" and isinstance(past_key_values, torch.Tensor):
      self._data = past_key_values
    else:
      original(self, past_key_values, backend, *args, **kwargs)

  __init__.accepts_tensor = True
  kv_cache_class.__init__ = __init__


class ModelRunner(torch.nn.Module):
  """The wrapper shape DMax's SPD loop expects (it reads the embeddings at `model.model.model`)."""

  def __init__(self, lm):
    super().__init__()
    self.model = lm

  @property
  def device(self):
    return self.model.device

  def forward(self, *args, **kwargs):
    return self.model(*args, **kwargs)


def load_model(dinfer: types.SimpleNamespace, hf_dir: str) -> ModelRunner:
  """dInfer's LLaDA2 model from a Hugging Face folder (per-expert safetensors), float32, eval mode.

  dInfer's loader reads `model.safetensors.index.json`; a single-file folder gets one written beside a
  link to its weights in a temporary folder."""
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf = json.load(f)
  config = dinfer.configuration.LLaDA2MoeConfig(**hf)
  config._attn_implementation = "sdpa"  # dInfer's cache update (replace_position) lives in its SDPA attention
  lm = dinfer.modeling.LLaDA2MoeModelLM(config).eval()
  with tempfile.TemporaryDirectory() as staging:
    folder = hf_dir
    if not os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json")):
      from safetensors import safe_open
      weights = os.path.join(hf_dir, "model.safetensors")
      with safe_open(weights, "pt") as f:
        index = {"weight_map": {name: "model.safetensors" for name in f.keys()}}
      os.symlink(os.path.abspath(weights), os.path.join(staging, "model.safetensors"))
      with open(os.path.join(staging, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
      folder = staging
    lm.load_weights(folder, torch_dtype=torch.float32, device="cpu")
  return ModelRunner(lm)


def spd_generator(dinfer: types.SimpleNamespace, runner: ModelRunner, threshold: float, mask_id: int, eos_id: int):
  """DMax's SPD decoder over `runner` (greedy, prefix KV cache, early stop at eos)."""
  decoder = dinfer.strategy.ThresholdParallelDecoder(temperature=0, threshold=threshold, mask_id=mask_id,
                                                     eos_id=eos_id)
  return dinfer.generate.BlockDiffusionLLM(
      runner, decoder, dinfer.utils.BlockIteratorFactory(start_block_align=True),
      cache_factory=dinfer.utils.KVCacheFactory("prefix", is_bd_model=True), early_stop=True)
