#!/usr/bin/env bash
# Decode speed on one NVIDIA GPU (prepared for an H200; not yet run: no GPU has been lent to this project).
# Installs jax[cuda12] into a fresh virtualenv, then times one SPD block step (ms per forward) against the
# roofline measured on the device (read bandwidth, bf16 matmul FLOP/s; the H200's nominal 4.8 TB/s HBM and
# ~990 TFLOP/s bf16 are the reference) for the mid-size random model (float32 and bf16) and for a 16B-shaped
# LLaDA2.0-mini with random bf16 weights (~32 GB). Results: $OUT (default ./gpu_results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e . "jax[cuda12]"
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python benchmarks/decode_speed.py --models mid --layouts before,after --json "$OUT/mid_float32.json" | tee "$OUT/mid_float32.txt"
python benchmarks/decode_speed.py --models mid,experts256 --dtype bfloat16 --layouts before,after --json "$OUT/mid_bf16.json" | tee "$OUT/mid_bf16.txt"
python benchmarks/decode_speed.py --config configs/llada2_mini.json --dtype bfloat16 --layouts after \
    --gen-lengths 256,1024 --batches 1,8 --json "$OUT/llada2_mini_bf16.json" | tee "$OUT/llada2_mini_bf16.txt"
# Continuous batching on the device: tokens/s of DMax-tiny's mixed batch at start fractions 0 / 0.5 / 1, to pick
# the accelerator default of decode_padded(start_fraction=...) (0.5 is the CPU measurement).
python benchmarks/decode_bench.py --mixed-batch --mixed-batch-sizes 1,8,64 --mixed-start-fractions 0,0.5,1 \
    --json "$OUT/mixed_batch.json" | tee "$OUT/mixed_batch.txt"
