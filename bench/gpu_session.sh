#!/usr/bin/env bash
# One prepared run for a lent GPU machine (15 minutes of device time in all): CUDA probe, the
# kernel cache cold then warm, model parity on CUDA, pipeline bench against PyTorch at
# roberta-base (f32, bf16-mixed = autocast on both sides, pure bf16), the KorQuAD recipe and
# the sample trained on CUDA, then roberta-large (linear and BiLSTM heads) while time is left.
#
# Prepared on the development machine (gpu/ is ignored by git, never committed):
#   strip -o gpu/pipeline target/release/pipeline && gzip -f gpu/pipeline
#   gzip -c ../shared/data/korquad/KorQuAD_v1.0_dev.json > gpu/korquad.json.gz   # optional
#   # optional, the build without CubeCL autotuning, to compare warm-up and step time:
#   cargo build --release --no-default-features && strip -o gpu/pipeline-noautotune \
#     target/release/pipeline && xz -T2 -f gpu/pipeline-noautotune && cargo build --release
# Run there from the repository root: `bash bench/gpu_session.sh` (logs and results go to $OUT).
# Every step has a time cap and a global deadline (DEADLINE seconds, default 540) so the call
# ends in time; steps that do not fit are skipped and say so. PART=2 runs only the second half
# (KorQuAD, sample, roberta-large, seq 512) for a second call.
#
# Compiled kernels and autotune results go to gpu/kernels (PIPELINE_KERNEL_CACHE): kept between
# calls while the machine stays warm, and packed into $OUT/kernels.tgz so a later session can
# carry them back (unpack into gpu/kernels before the call).
set -uo pipefail
DEADLINE=${DEADLINE:-540}
PART=${PART:-1}
LOG=log.txt
source "$(dirname "$0")/gpu_common.sh"
export PIPELINE_KERNEL_CACHE=$PWD/gpu/kernels
mkdir -p "$PIPELINE_KERNEL_CACHE"

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
echo "kernel cache: $(du -sh "$PIPELINE_KERNEL_CACHE" | cut -f1) in $PIPELINE_KERNEL_CACHE"
PEAK_F32=67; PEAK_HALF=989 # H100 SXM dense peaks (TFLOP/s): f32 CUDA cores, bf16/f16 tensor cores
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
pack() { tar czf "$OUT/kernels.tgz" -C gpu kernels 2>/dev/null; say "kernel cache $(du -sh gpu/kernels | cut -f1)"; }
trap pack EXIT
# pair ARGS...: pipeline then PyTorch on the same arguments
pair() { ours "$@"; torchb "$@"; }

if [ "$PART" = 1 ]; then
  say "== tiny model on CUDA: cold kernel cache (compile + autotune), then warm"
  CAPB=150 ours --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
  CAPB=60 ours --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
  if [ -f gpu/pipeline-noautotune.xz ]; then
    say "== the same without autotuning (one heuristic kernel per op), own kernel cache"
    xz -dc gpu/pipeline-noautotune.xz >/tmp/pipeline-noautotune && chmod +x /tmp/pipeline-noautotune
    PIPELINE_KERNEL_CACHE=$PWD/gpu/kernels-noautotune CAPB=120 bench "noautotune tiny" 120 \
      /tmp/pipeline-noautotune bench --device cuda --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
  fi
  say "== parity: tiny checkpoints, pipeline infer on CUDA vs transformers logits"
  step parity 60 python3 bench/gpu_parity.py $BIN --device cuda
  PIPELINE_ATTENTION=fused step parity-fused-attention 60 python3 bench/gpu_parity.py $BIN --device cuda

  say "== roberta-base seq 384 batch 16: pipeline vs PyTorch"
  CAPB=200
  pair --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision f32 --peak-tflops $PEAK_F32
  CAPB=150
  pair --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision bf16-mixed --peak-tflops $PEAK_HALF
  ours --model roberta-base --seq 384 --batch 16 --steps 8 --warmup 3 --precision bf16 --peak-tflops $PEAK_HALF
  [ -x /tmp/pipeline-noautotune ] && PIPELINE_KERNEL_CACHE=$PWD/gpu/kernels-noautotune bench \
    "noautotune roberta-base bf16-mixed" 150 /tmp/pipeline-noautotune bench --device cuda --model roberta-base \
    --seq 384 --batch 16 --steps 8 --warmup 3 --precision bf16-mixed --peak-tflops $PEAK_HALF
fi

say "== KorQuAD recipe on CUDA (f32)"
if [ -f ../shared/data/korquad/KorQuAD_v1.0_dev.json ]; then
  step korquad 200 $BIN run all --config configs/korquad-tiny.toml --set train.device=cuda --set train.drop_last=true
  cp outputs/korquad-tiny/evaluate/metrics.json "$OUT/korquad_metrics.json" 2>/dev/null
  cp outputs/korquad-tiny/evaluate/report.md "$OUT/korquad_report.md" 2>/dev/null
  for f in outputs/korquad-tiny/train/fold-*/metrics.jsonl; do
    sed "s/^/$(basename "$(dirname "$f")")\t/" "$f"
  done >"$OUT/korquad_train.tsv" 2>/dev/null
else
  say "SKIP korquad (no data)"
fi

say "== the sample (pipeline.toml) on CUDA, to compare with the CPU run"
step sample 60 $BIN run all --set run.name=sample-cuda --set train.device=cuda --set train.drop_last=true
for f in outputs/sample-cuda/train/fold-*/metrics.jsonl; do
  sed "s/^/$(basename "$(dirname "$f")")\t/" "$f"
done >"$OUT/sample_cuda_train.tsv" 2>/dev/null

say "== roberta-large seq 384 batch 8, then seq 512, while time is left"
CAPB=150
pair --model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
# the competition seed's model: roberta-large + 2-layer BiLSTM head
pair --model roberta-large --head bilstm --seq 384 --batch 8 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
pair --model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
pair --model roberta-base --seq 512 --batch 16 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
say "== done"
cut -f1-4 "$OUT/bench.tsv" | cut -c1-400
