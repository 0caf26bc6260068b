#!/usr/bin/env bash
# One prepared run for a lent GPU machine (15 minutes of device time in all), in order of what
# matters most (issue 25 §5): our kernels' parity tests on CUDA, per-kernel GPU time at
# roberta-large width, the competition model and roberta-large linear (fused, reference path,
# PyTorch), seq 512 x 16; then the default build (no autotuning) on the tiny model with a cold
# then warm kernel cache, CUDA parity, roberta-base seq 384 against PyTorch in f32 and bf16-mixed (and with
# AdamW one tensor at a time), CubeCL's
# per-kernel GPU time for those steps and the BiLSTM head's (PIPELINE_CUDA_PROFILE), the KorQuAD
# recipe end to end on CUDA (compare with the CPU's scores), roberta-large (linear and BiLSTM
# heads) against PyTorch, seq 512, and last the autotuning build while time is left.
#
# Prepared on the development machine (gpu/ is ignored by git, never committed):
#   cargo build --release && strip -o gpu/pipeline target/release/pipeline && gzip -f gpu/pipeline
#   cargo test --release --test kernels --no-run && strip -o gpu/kernels-test \
#     "$(ls -t target/release/deps/kernels-* | grep -v '\.d$' | head -1)" && gzip -f gpu/kernels-test
#   gzip -c ../shared/data/korquad/KorQuAD_v1.0_dev.json > gpu/korquad.json.gz   # optional
#   cp <an earlier $OUT>/kernels.tgz gpu/kernels.tgz   # optional: skip most compilation
#   # optional, the autotuning build (its cold start took over 80 s a shape on an H100):
#   cargo build --release --features autotune && strip -o gpu/pipeline-autotune \
#     target/release/pipeline && xz -T2 -f gpu/pipeline-autotune && cargo build --release
# Run there from the repository root: `bash bench/gpu_session.sh` (logs and results go to $OUT).
# Every step has a time cap and a global deadline (DEADLINE seconds, default 540) so the call
# ends in time; steps that do not fit are skipped and say so.
#
# Compiled kernels (and autotune results) go to /tmp/pipeline-kernels* (PIPELINE_KERNEL_CACHE),
# one folder per build, kept for later calls while the machine stays warm and packed into
# $OUT/kernels.tgz.
set -uo pipefail
DEADLINE=${DEADLINE:-470}
LOG=log.txt
source "$(dirname "$0")/gpu_common.sh"
AT=/tmp/pipeline-autotune
[ -f gpu/pipeline-autotune.xz ] && xz -dc gpu/pipeline-autotune.xz >$AT && chmod +x $AT
# outside gpu/: a later call on the same warm machine replaces the carried gpu/ folder
KC=/tmp/pipeline-kernels
# gpu/kernels.tgz (optional): a kernel cache from an earlier session ($OUT/kernels.tgz, or its
# pipeline-kernels folder), so this one compiles only what changed since
if [ -f gpu/kernels.tgz ]; then
  tar xzf gpu/kernels.tgz -C /tmp pipeline-kernels 2>/dev/null && say "kernel cache carried in"
fi
mkdir -p "$KC" "$KC-autotune"

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
# ours / at / torchb CAP ARGS...: the default build, the autotuning build, PyTorch
ours() { local c=$1; shift; PIPELINE_KERNEL_CACHE=$KC bench "pipeline $*" "$c" $BIN bench --device cuda "$@"; }
at() { local c=$1; shift; [ -x $AT ] && PIPELINE_KERNEL_CACHE=$KC-autotune bench "pipeline-autotune $*" "$c" $AT bench --device cuda "$@"; }
torchb() { local c=$1; shift; bench "pytorch $*" "$c" python3 bench/torch_bench.py --device cuda "$@"; }
pack() { tar czf "$OUT/kernels.tgz" -C /tmp pipeline-kernels pipeline-kernels-autotune 2>/dev/null; say "kernel caches $(du -sh $KC* | tr '\n' ' ')"; }
trap pack EXIT
RB="--model roberta-base --seq 384 --batch 16"
export PIPELINE_KERNEL_CACHE=$KC

say "== 1. our kernels' parity tests on CUDA (tests/kernels.rs, TF32 tolerances; CPU backend as reference)"
if [ -f gpu/kernels-test.gz ]; then
  gunzip -c gpu/kernels-test.gz >/tmp/kernels-test && chmod +x /tmp/kernels-test
  PIPELINE_KERNEL_BACKEND=cuda step kernel-tests 150 /tmp/kernels-test --test-threads 1
else
  say "SKIP kernel tests (no gpu/kernels-test.gz)"
fi

say "== 2. per-kernel GPU time at roberta-large width: 2 layers + BiLSTM head, 384 x 8, bf16-mixed"
PIPELINE_CUDA_PROFILE=$OUT/profile_roberta_large_2l_bilstm.txt ours 90 --model bench/shapes/roberta-large-2layers.json \
  --head bilstm --seq 384 --batch 8 --steps 2 --warmup 1 --precision bf16-mixed

say "== 3. the competition model: roberta-large + BiLSTM, seq 384 batch 8, bf16-mixed: fused kernels, the tensor-operation path, PyTorch"
RL="--model roberta-large --seq 384 --batch 8 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF"
ours 150 $RL --head bilstm
torchb 50 $RL --head bilstm
ours 100 $RL --head bilstm --reference-kernels
say "== roberta-large linear: fused, reference, PyTorch"
ours 80 $RL
ours 80 $RL --reference-kernels
torchb 50 $RL
say "== 4. seq 512 x 16, the competition model"
ours 90 --model roberta-large --seq 512 --batch 16 --steps 3 --warmup 1 --precision bf16-mixed --head bilstm --peak-tflops $PEAK_HALF
torchb 50 --model roberta-large --seq 512 --batch 16 --steps 3 --warmup 1 --precision bf16-mixed --head bilstm --peak-tflops $PEAK_HALF

say "== tiny model, kernel cache cold (unless carried in), then warm"
ours 100 --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
ours 40 --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
say "== parity: tiny checkpoints, pipeline infer on CUDA vs transformers logits"
step parity 50 python3 bench/gpu_parity.py $BIN --device cuda

say "== roberta-base seq 384 batch 16: pipeline vs PyTorch, f32 then bf16-mixed"
ours 110 $RB --steps 6 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
torchb 50 $RB --steps 6 --warmup 2 --precision f32 --peak-tflops $PEAK_F32
ours 90 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
torchb 50 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
say "== the tensor-operation path instead of our fused kernels (attention), same build"
ours 90 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF --reference-kernels
say "== AdamW as one flat tensor (the multi-tensor step; one tensor at a time is the default)"
PIPELINE_MULTI_TENSOR=1 ours 60 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF

say "== where a step's GPU time goes: CubeCL's kernel profile (launches serialised, so slower)"
PIPELINE_CUDA_PROFILE=$OUT/profile_roberta_base_bf16.txt ours 60 $RB --steps 2 --warmup 1 --precision bf16-mixed
PIPELINE_CUDA_PROFILE=$OUT/profile_roberta_base_f32.txt ours 60 $RB --steps 2 --warmup 1 --precision f32
PIPELINE_CUDA_PROFILE=$OUT/profile_tiny_bilstm.txt ours 60 --model tiny --head bilstm --seq 64 --batch 8 --steps 2 --warmup 1

say "== the KorQuAD recipe end to end on CUDA (f32; compare with the CPU's scores)"
if [ -f ../shared/data/korquad/KorQuAD_v1.0_dev.json ]; then
  step korquad 150 $BIN run all --config configs/korquad-tiny.toml --set run.name=korquad-cuda \
    --set train.device=cuda --set train.drop_last=true
  cp outputs/korquad-cuda/evaluate/report.md "$OUT/korquad_report.md" 2>/dev/null
  for f in outputs/korquad-cuda/train/fold-*/metrics.jsonl; do
    sed "s/^/$(basename "$(dirname "$f")")\t/" "$f"
  done >"$OUT/korquad_train.tsv" 2>/dev/null
else
  say "SKIP korquad (no data)"
fi

say "== the tiny BiLSTM fused vs reference, roberta-base seq 512, while time is left"
ours 60 --model tiny --head bilstm --seq 64 --batch 8 --steps 5 --warmup 2
ours 60 --model tiny --head bilstm --seq 64 --batch 8 --steps 5 --warmup 2 --reference-kernels
ours 80 --model roberta-base --seq 512 --batch 16 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
torchb 50 --model roberta-base --seq 512 --batch 16 --steps 5 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF

say "== the autotuning build: tiny model cold, roberta-base bf16-mixed"
at 80 --model tiny --seq 64 --batch 8 --steps 20 --warmup 3
at 90 $RB --steps 6 --warmup 2 --precision bf16-mixed --peak-tflops $PEAK_HALF
say "== done"
cut -f1-4 "$OUT/bench.tsv" | cut -c1-400
