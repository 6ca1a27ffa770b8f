#!/usr/bin/env bash
# ViTDet-B at 1024x1024 on one CUDA GPU, bfloat16 autocast: dense (Detectron2's blocks),
# dense (SDPA), pruned with SDPA and pruned with FlexAttention (SViT schedule, and unequal
# per-image rates), batch 1 / 4 / 8, windowed (configs/COCO/mask_rcnn_vitdet_b_svit_window.py)
# and global (mask_rcnn_vitdet_b_svit.py); backbone only; every row eager and compiled
# (--compile none default: speedups against the fastest dense row of either mode; the
# compiled rows compile in the warm-up rounds). Writes one table, $OUT/gpu_table.md (default
# OUT=output/gpu_benchmark), plus each run's results.{json,md}. Needs the project's
# environment with a CUDA build of torch; planned for about 10 minutes on one H200, most of
# it compiling (the first FlexAttention calls compile the kernel, inside the warm-up rounds).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-${TOKENPRUNE_VENV:-$HOME/.cache/tokenprune/venv}/bin/python}
OUT=${OUT:-output/gpu_benchmark}
export PYTHONPATH="$PWD/projects/TokenPrune${PYTHONPATH:+:$PYTHONPATH}"
for cfg in svit_window svit; do
  "$PY" -m tokenprune.tools.benchmark --config-file "configs/COCO/mask_rcnn_vitdet_b_$cfg.py" \
    --device cuda --precision bfloat16 --schedule svit --attention sdpa flex \
    --batch-size 1 4 8 --backbone-only --warmup 3 --repeats 10 --memory tensors \
    --compile none default \
    --output "$OUT/$cfg"
done
"$PY" -m tokenprune.tools.benchmark_summary "$OUT/svit_window/results.json" \
  "$OUT/svit/results.json" --output "$OUT/gpu_table.md"
