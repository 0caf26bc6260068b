#!/usr/bin/env bash
# Where CUDA training time goes: per-step times of `pipeline bench` (warm-up steps include kernel
# compilation and autotuning) with CubeCL's compilation and autotune logs, then the KorQuAD
# recipe's fold 0 with a progress line every 30 s (steady-state windows/s). Same preparation as
# bench/gpu_session.sh (gpu/pipeline.gz, optional gpu/korquad.json.gz); results under $OUT.
set -uo pipefail
DEADLINE=${DEADLINE:-320}
LOG=diag.txt
source "$(dirname "$0")/gpu_common.sh"
[ -f /usr/local/cuda/include/cuda.h ] && export CUDA_PATH=/usr/local/cuda
cat >cubecl.toml <<'TOML'
[compilation.logger]
level = "basic"
file = "/tmp/cubecl-compile.log"
[autotune.logger]
level = "minimal"
file = "/tmp/cubecl-autotune.log"
TOML
logs() { # counts lines of the CubeCL logs since the last call
  say "compile log: $(wc -l </tmp/cubecl-compile.log 2>/dev/null || echo 0) lines, autotune log: $(wc -l </tmp/cubecl-autotune.log 2>/dev/null || echo 0) lines"
}
step tiny 100 $BIN bench --device cuda --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
logs
cp /tmp/cubecl-compile.log /tmp/compile-tiny.log 2>/dev/null
if [ -f ../shared/data/korquad/KorQuAD_v1.0_dev.json ]; then
  $BIN run split --config configs/korquad-tiny.toml >/dev/null 2>&1 || $BIN run prepare --config configs/korquad-tiny.toml
  $BIN run split --config configs/korquad-tiny.toml
  step korquad-fold0 140 $BIN run train --fold 0 --config configs/korquad-tiny.toml --set train.device=cuda
  logs
fi
step roberta-base 70 $BIN bench --device cuda --model roberta-base --seq 384 --batch 16 --steps 5 --warmup 3 --peak-tflops 67
logs
rm -f cubecl.toml
for f in compile-tiny cubecl-compile cubecl-autotune; do
  [ -f /tmp/$f.log ] && gzip -c /tmp/$f.log >"$OUT/$f.log.gz"
done
say "done"
