"""Peak memory of `convert_weights.py` (both directions) on a synthetic ~1 GB LLaDA2-MoE checkpoint.

  python benchmarks/convert_memory.py [--target-gb 1.0] [--dtype bfloat16] [--shard-size 200MB]

Builds a random checkpoint of the LLaDA2.0-mini architecture family (configs/llada2_mini.json with
smaller widths, the layer count chosen to reach --target-gb; sharded safetensors), then runs
hf-to-jax, jax-to-hf (per-expert) and jax-to-hf --merged-experts each in a fresh process under
`/usr/bin/time -v`, while polling /proc for the anonymous vs file-backed split of the resident set.
The baseline is the same interpreter doing everything but the tensor work (imports, config, abstract
shapes). Peak RSS
includes file-backed pages (memory-mapped inputs / buffers the kernel can drop); RssAnon is memory
the process really owns.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dmax_jax import flops  # noqa: E402
from dmax_jax.checkpoint.convert import parse_size  # noqa: E402
from dmax_jax.checkpoint.synthetic import write_synthetic_hf  # noqa: E402
from dmax_jax.config import ModelConfig  # noqa: E402

SMALL_WIDTHS = {"vocab_size": 32768, "hidden_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 2,
                "head_dim": 128, "intermediate_size": 2560, "moe_intermediate_size": 256, "num_experts": 64,
                "mask_token_id": 32767, "pad_token_id": 32766, "eos_token_id": 32766}


# Everything a conversion does besides moving tensors: imports, config, abstract model shapes.
BASELINE = ("import sys, dmax_jax.checkpoint.convert; from dmax_jax import ModelConfig, abstract_variables; "
            "abstract_variables(ModelConfig.from_json(sys.argv[1]))")


def synthetic_config(target_bytes: int, itemsize: int) -> dict:
  """configs/llada2_mini.json with SMALL_WIDTHS and as many layers as fit in `target_bytes`."""
  with open(os.path.join(REPO, "configs", "llada2_mini.json")) as f:
    hf = {**json.load(f), **SMALL_WIDTHS}
  for layers in range(2, 200):
    size = flops.parameter_count(ModelConfig.from_hf_dict({**hf, "num_hidden_layers": layers})) * itemsize
    if size >= target_bytes:
      break
  return {**hf, "num_hidden_layers": layers, "max_window_layers": layers}


def _proc_kb(pid: int, field: str) -> int:
  with open(f"/proc/{pid}/status") as f:
    m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
  return int(m.group(1)) if m else 0


def measure(argv: list[str]) -> dict:
  """Runs `argv` under /usr/bin/time -v; returns seconds, max RSS (time -v) and polled RssAnon/RssFile peaks."""
  with tempfile.NamedTemporaryFile("r", suffix=".time") as log:
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v", "-o", log.name, *argv], stdout=subprocess.DEVNULL)
    anon = file = 0
    child = None
    while proc.poll() is None:
      try:
        if child is None:
          child = psutil.Process(proc.pid).children()[0].pid
        anon, file = max(anon, _proc_kb(child, "RssAnon")), max(file, _proc_kb(child, "RssFile"))
      except (OSError, IndexError, psutil.Error):
        pass
      time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.returncode:
      raise RuntimeError(f"{argv} failed with exit code {proc.returncode}")
    max_rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read()).group(1))
  return {"seconds": seconds, "max_rss": max_rss * 1024, "anon": anon * 1024, "file": file * 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--target-gb", type=float, default=1.0, help="approximate checkpoint size in GB (1e9 bytes)")
  parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                      help="dtype of the synthetic checkpoint")
  parser.add_argument("--shard-size", default="200MB", help="safetensors shard size of input and output")
  parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, deleted after)")
  args = parser.parse_args()

  work = tempfile.mkdtemp(prefix="convert_memory-", dir=args.workdir)
  try:
    hf_config = synthetic_config(int(args.target_gb * 1e9), 2 if args.dtype == "bfloat16" else 4)
    src = os.path.join(work, "hf")
    os.makedirs(src)
    start = time.perf_counter()
    size = write_synthetic_hf(src, hf_config, args.dtype, shard_bytes=parse_size(args.shard_size))
    print(f"synthetic checkpoint: {hf_config['num_hidden_layers']} layers, {size / 1e9:.3f} GB {args.dtype}, "
          f"{len(os.listdir(src)) - 2} shards, written in {time.perf_counter() - start:.1f} s")
    cli = [sys.executable, os.path.join(REPO, "convert_weights.py")]
    runs = {
        "baseline (no tensor work)": [sys.executable, "-c", BASELINE, src],
        "hf-to-jax": cli + ["hf-to-jax", src, os.path.join(work, "jax"), "--no-progress"],
        "jax-to-hf": cli + ["jax-to-hf", os.path.join(work, "jax"), os.path.join(work, "out"), "--no-progress",
                            "--shard-size", args.shard_size],
        "jax-to-hf --merged-experts": cli + ["jax-to-hf", os.path.join(work, "jax"), os.path.join(work, "merged"),
                                             "--no-progress", "--merged-experts", "--shard-size", args.shard_size],
    }
    print(f"{'run':28s} {'seconds':>8s} {'max RSS MB':>11s} {'RssAnon MB':>11s} {'RssFile MB':>11s} "
          f"{'maxRSS/ckpt':>11s} {'(anon-base)/ckpt':>16s}")
    base = None
    for name, argv in runs.items():
      r = measure(argv)
      base = base or r
      print(f"{name:28s} {r['seconds']:8.1f} {r['max_rss'] / 1e6:11.0f} {r['anon'] / 1e6:11.0f} "
            f"{r['file'] / 1e6:11.0f} {r['max_rss'] / size:11.2f} {(r['anon'] - base['anon']) / size:16.2f}")
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
