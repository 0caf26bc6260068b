#!/usr/bin/env bash
# GPU benchmark, one command on the GPU machine: `pipeline bench` and the PyTorch reference
# (bench/torch_bench.py) for roberta-base and roberta-large at seq 384 and 512, same batch and
# precision, printed side by side with their ratio. Needs the stripped release binary at
# $BIN (default target/release/pipeline) and a Python with torch + transformers.
# PEAK: the card's peak TFLOP/s at the precision used (H100 SXM: 67 f32, 495 TF32, 989 bf16).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/pipeline}
PY=${PYTHON:-python3}
PEAK=${PEAK:-67}
PREC=${PREC:-f32}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
for model in roberta-base roberta-large; do
  for seq in 384 512; do
    batch=${BATCH:-8}
    ours=$($BIN bench --device cuda --model $model --seq $seq --batch $batch --steps ${STEPS:-10} --warmup 3 --precision $PREC --peak-tflops $PEAK 2>&1 | tail -1)
    ref=$($PY bench/torch_bench.py --device cuda --model $model --seq $seq --batch $batch --steps ${STEPS:-10} --warmup 3 --precision $PREC --peak-tflops $PEAK 2>&1 | tail -1)
    echo "$model seq $seq batch $batch $PREC"
    echo "  pipeline: $ours"
    echo "  pytorch:  $ref"
    $PY - "$ours" "$ref" <<'PYEOF'
import json, sys
try:
    o, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    print(f"  examples/s pipeline {o['examples_per_second']:.2f} / pytorch {r['examples_per_second']:.2f} = {o['examples_per_second'] / r['examples_per_second']:.2f}x, MFU {o['mfu']} vs {r['mfu']}")
except Exception as e:
    print(f"  (no ratio: {e})")
PYEOF
  done
done
