#!/usr/bin/env bash
# Batching strategies side by side (train.batching = padded | dynamic | bucket): one fold
# trained with each, on the shipped sample (short contexts) and on a KorQuAD subset with the
# KorQuAD recipe (configs/korquad-tiny.toml; skipped without ../shared). Prints one Markdown
# row per run: training windows/s, token positions computed per window, validation loss / F1.
# Usage: bench/batching.sh [pipeline binary]   (default target/release/pipeline)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "${1:-$root/target/release/pipeline}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$root/pipeline.toml" "$work/"
ln -s "$root/data" "$work/data"
mkdir -p "$work/configs" && cp "$root/configs/korquad-tiny.toml" "$work/configs/"
cd "$work"

row() { # name, run dir, strategy
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
name, run, strategy = sys.argv[1:]
m = json.load(open(f"{run}/train/fold-0/manifest.json"))["summary"]
b = m["best"]
print(f"| {name} | {strategy} | {m['windows_per_second']:.1f} | {m['tokens_per_window']:.1f} | "
      f"{b['loss']:.4f} | {b['f1']:.2f} | {m['train_seconds']:.1f} |")
PY
}

echo "| data | batching | train windows/s | tokens / window | best val loss | best val F1 | train s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for strategy in padded dynamic bucket; do
  "$bin" run train --fold 0 -q --force --set "train.batching=$strategy" --set train.pad_multiple=16 >/dev/null 2>&1 \
    || "$bin" run all --fold 0 -q --set "train.batching=$strategy" --set train.pad_multiple=16 >/dev/null
  row sample outputs/sample "$strategy"
done
korquad="$root/../shared/data/korquad/KorQuAD_v1.0_dev.json"
if [ -f "$korquad" ]; then
  k=(--config configs/korquad-tiny.toml --set "data.train=$korquad" --set data.max_train_samples=1500
     --set train.epochs=1 --set split.folds=3 --set train.pad_multiple=64)
  "$bin" run split -q "${k[@]}" >/dev/null 2>&1 || { "$bin" run prepare -q "${k[@]}" >/dev/null; "$bin" run split -q "${k[@]}" >/dev/null; }
  for strategy in padded dynamic bucket; do
    "$bin" run train --fold 0 -q --force "${k[@]}" --set "train.batching=$strategy" >/dev/null
    row "KorQuAD 1500 q, L 256" outputs/korquad-tiny "$strategy"
  done
  # The competition notebook's windows (max_seq_length 384, stride 128): many are shorter than 384.
  k+=(--set run.name=korquad-384 --set prepare.max_seq_length=384 --set prepare.doc_stride=128)
  "$bin" run prepare -q "${k[@]}" >/dev/null
  "$bin" run split -q "${k[@]}" >/dev/null
  for strategy in padded dynamic bucket; do
    "$bin" run train --fold 0 -q --force "${k[@]}" --set "train.batching=$strategy" >/dev/null
    row "KorQuAD 1500 q, L 384" outputs/korquad-384 "$strategy"
  done
else
  echo "(KorQuAD rows skipped: $korquad not found)" >&2
fi
