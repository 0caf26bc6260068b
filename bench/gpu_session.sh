#!/usr/bin/env bash
# One prepared run for a lent GPU machine (15 minutes of device time in all): CUDA probe, model
# parity on CUDA, the KorQuAD recipe (configs/korquad-tiny.toml) trained on CUDA, the sample
# trained on CUDA (to compare with the CPU run), and pipeline bench against PyTorch.
#
# Prepared on the development machine (gpu/ is ignored by git, never committed):
#   strip -o gpu/pipeline target/release/pipeline && gzip -f gpu/pipeline
#   gzip -c ../shared/data/korquad/KorQuAD_v1.0_dev.json > gpu/korquad.json.gz   # optional
# Run there from the repository root: `bash bench/gpu_session.sh` (logs and results go to $OUT).
# Every step has a time cap and a global deadline (DEADLINE seconds, default 430) so the call
# ends in time; steps that do not fit are skipped and say so.
set -uo pipefail
DEADLINE=${DEADLINE:-430}
LOG=log.txt
source "$(dirname "$0")/gpu_common.sh"

say "== probe"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
for c in /usr/local/cuda /usr/local/cuda-13.0 /opt/cuda; do
  [ -f "$c/include/cuda.h" ] && { export CUDA_PATH=$c; break; }
done
if [ -z "${CUDA_PATH:-}" ] && command -v nvcc >/dev/null; then
  CUDA_PATH=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); export CUDA_PATH
fi
echo "CUDA_PATH=${CUDA_PATH:-none}; nvcc: $(nvcc --version 2>/dev/null | tail -1)"
if ! ldconfig -p | grep -q 'libnvrtc.so'; then
  lib=$(ls "${CUDA_PATH:-/nonexistent}"/lib64/libnvrtc.so* 2>/dev/null | head -1)
  [ -z "$lib" ] && lib=$(python3 -c 'import glob,site;print(next(iter(sorted(p for s in site.getsitepackages() for p in glob.glob(s+"/nvidia/**/libnvrtc.so*",recursive=True))),""))' 2>/dev/null)
  [ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "nvrtc: $(ldconfig -p | grep -m1 libnvrtc.so || echo "${LD_LIBRARY_PATH:-not found}")"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))'
PEAK_F32=67; PEAK_HALF=989 # H100 SXM dense peaks (TFLOP/s): f32 CUDA cores, bf16/f16 tensor cores
# The first run (2026-11-26) spent its whole time compiling autotune candidates at CubeCL's
# default level; fewer candidates per shape by default here (AUTOTUNE=balanced to compare).
export CUBECL_AUTOTUNE_LEVEL=${AUTOTUNE:-minimal}
echo "CUBECL_AUTOTUNE_LEVEL=$CUBECL_AUTOTUNE_LEVEL"

# bench NAME CAP ARGS...: ours (pipeline bench) or torch with a GPU-memory poller; one TSV line
bench() {
  local name=$1 max=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >/tmp/mem.txt 2>/dev/null &
  local mp=$!
  step "$name" "$max" "$@" >/tmp/bench.out; local rc=$?
  kill $mp 2>/dev/null; wait $mp 2>/dev/null
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(sort -n /tmp/mem.txt | tail -1)" "$(grep '^{' /tmp/bench.out | tail -1)" | tee -a "$OUT/bench.tsv"
}
ours() { bench "pipeline $*" "$CAPB" $BIN bench --device cuda "$@"; }
torchb() { bench "pytorch $*" "$CAPB" python3 bench/torch_bench.py --device cuda "$@"; }

say "== smoke: tiny model training steps on CUDA"
CAPB=90 ours --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
say "== parity: tiny checkpoints, pipeline infer on CUDA vs transformers logits"
step parity 60 python3 bench/gpu_parity.py $BIN --device cuda

say "== KorQuAD recipe on CUDA (f32)"
if [ -f ../shared/data/korquad/KorQuAD_v1.0_dev.json ]; then
  step korquad 170 $BIN run all --config configs/korquad-tiny.toml --set train.device=cuda --set train.drop_last=true
  cp outputs/korquad-tiny/evaluate/metrics.json "$OUT/korquad_metrics.json" 2>/dev/null
  cp outputs/korquad-tiny/evaluate/report.md "$OUT/korquad_report.md" 2>/dev/null
  for f in outputs/korquad-tiny/train/fold-*/metrics.jsonl; do
    sed "s/^/$(basename "$(dirname "$f")")\t/" "$f"
  done >"$OUT/korquad_train.tsv" 2>/dev/null
else
  say "SKIP korquad (no data)"
fi

say "== roberta-base seq 384 batch 16: pipeline vs PyTorch, f32 and bf16"
CAPB=70
ours --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision f32 --peak-tflops $PEAK_F32
torchb --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision f32 --peak-tflops $PEAK_F32
ours --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision bf16 --peak-tflops $PEAK_HALF
torchb --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision bf16 --peak-tflops $PEAK_HALF

say "== the sample (pipeline.toml) on CUDA, to compare with the CPU run"
step sample 60 $BIN run all --set run.name=sample-cuda --set train.device=cuda --set train.drop_last=true
for f in outputs/sample-cuda/train/fold-*/metrics.jsonl; do
  sed "s/^/$(basename "$(dirname "$f")")\t/" "$f"
done >"$OUT/sample_cuda_train.tsv" 2>/dev/null

say "== roberta-large seq 384 batch 8, then seq 512, while time is left"
CAPB=80
ours --model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision bf16 --peak-tflops $PEAK_HALF
torchb --model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision bf16 --peak-tflops $PEAK_HALF
ours --model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
torchb --model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
say "== done"
cut -f1-4 "$OUT/bench.tsv" | cut -c1-400
