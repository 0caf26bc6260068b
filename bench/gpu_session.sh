#!/usr/bin/env bash
# One prepared run for a lent GPU machine (15 minutes of device time in all), in order of what
# matters most, since the first GPU session showed that kernel compilation (NVRTC, ~0.4 s a
# kernel) and autotuning dominate the first minutes: the build without autotuning first (tiny
# model cold then warm kernel cache, CUDA parity, roberta-base seq 384 against PyTorch in f32
# and bf16-mixed, the KorQuAD recipe's fold 0 for one epoch to compare its validation loss with
# the CPU's), then the default (autotuning) build cold, then roberta-large while time is left.
#
# Prepared on the development machine (gpu/ is ignored by git, never committed):
#   cargo build --release --no-default-features && strip -o gpu/pipeline-noautotune \
#     target/release/pipeline && xz -T2 -f gpu/pipeline-noautotune
#   cargo build --release && strip -o gpu/pipeline target/release/pipeline && gzip -f gpu/pipeline
#   gzip -c ../shared/data/korquad/KorQuAD_v1.0_dev.json > gpu/korquad.json.gz   # optional
# Run there from the repository root: `bash bench/gpu_session.sh` (logs and results go to $OUT).
# Every step has a time cap and a global deadline (DEADLINE seconds, default 540) so the call
# ends in time; steps that do not fit are skipped and say so.
#
# Compiled kernels and autotune results go to gpu/kernels* (PIPELINE_KERNEL_CACHE), one folder
# per build, packed into $OUT/kernels.tgz so a later session can carry them back.
set -uo pipefail
DEADLINE=${DEADLINE:-540}
LOG=log.txt
source "$(dirname "$0")/gpu_common.sh"
NOAT=/tmp/pipeline-noautotune
if [ -f gpu/pipeline-noautotune.xz ]; then
  xz -dc gpu/pipeline-noautotune.xz >$NOAT && chmod +x $NOAT
else
  say "no gpu/pipeline-noautotune.xz: using the default build throughout"; NOAT=$BIN
fi
KC=$PWD/gpu/kernels
mkdir -p "$KC" "$KC-noautotune"

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
export CUBECL_AUTOTUNE_LEVEL=${AUTOTUNE:-minimal}

# bench NAME CAP ARGS...: one run with a GPU-memory poller; one TSV line
bench() {
  local name=$1 max=$2; shift 2
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >/tmp/mem.txt 2>/dev/null &
  local mp=$!
  step "$name" "$max" "$@" >/tmp/bench.out; local rc=$?
  kill $mp 2>/dev/null; wait $mp 2>/dev/null
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(sort -n /tmp/mem.txt | tail -1)" "$(grep '^{' /tmp/bench.out | tail -1)" | tee -a "$OUT/bench.tsv"
}
# noat / ours / torchb CAP ARGS...: the build without autotuning, the default build, PyTorch
noat() { local c=$1; shift; PIPELINE_KERNEL_CACHE=$KC-noautotune bench "pipeline-noautotune $*" "$c" $NOAT bench --device cuda "$@"; }
ours() { local c=$1; shift; PIPELINE_KERNEL_CACHE=$KC bench "pipeline $*" "$c" $BIN bench --device cuda "$@"; }
torchb() { local c=$1; shift; bench "pytorch $*" "$c" python3 bench/torch_bench.py --device cuda "$@"; }
pack() { tar czf "$OUT/kernels.tgz" -C gpu kernels kernels-noautotune 2>/dev/null; say "kernel caches $(du -sh gpu/kernels* | tr '\n' ' ')"; }
trap pack EXIT
RB="--model roberta-base --seq 384 --batch 16"

say "== build without autotuning: tiny model, cold kernel cache, then warm"
noat 100 --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
noat 40 --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
say "== parity: tiny checkpoints, pipeline infer on CUDA vs transformers logits"
PIPELINE_KERNEL_CACHE=$KC-noautotune step parity 50 python3 bench/gpu_parity.py $NOAT --device cuda

say "== roberta-base seq 384 batch 16: pipeline vs PyTorch, f32 then bf16-mixed"
noat 110 $RB --steps 6 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
torchb 50 $RB --steps 6 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
noat 90 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
torchb 50 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF

say "== KorQuAD recipe fold 0, one epoch, on CUDA (f32; CPU: validation loss 3.98986)"
if [ -f ../shared/data/korquad/KorQuAD_v1.0_dev.json ]; then
  K="--config configs/korquad-tiny.toml"
  $NOAT run split -q $K || say "prepare/split failed"
  PIPELINE_KERNEL_CACHE=$KC-noautotune step korquad-fold0 110 $NOAT run train $K --fold 0 \
    --set train.device=cuda --set train.drop_last=true --set train.epochs=1
  cp outputs/korquad-tiny/train/fold-0/metrics.jsonl "$OUT/korquad_fold0_metrics.jsonl" 2>/dev/null
else
  say "SKIP korquad (no data)"
fi

say "== default build (autotuning): tiny model cold, roberta-base bf16-mixed"
ours 80 --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
ours 90 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF

say "== roberta-large seq 384 batch 8 (the seed's model; BiLSTM head) while time is left"
RL="--model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF"
noat 80 $RL
torchb 50 $RL
noat 80 $RL --head bilstm
torchb 50 $RL --head bilstm
say "== done"
cut -f1-4 "$OUT/bench.tsv" | cut -c1-400
