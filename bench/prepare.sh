#!/usr/bin/env bash
# Benchmark: `pipeline run prepare` vs HF run_qa.py's prepare_train_features on KorQuAD 1.0 dev,
# same tokenizer (the WordPiece vocabulary prepare trains), same max_seq_length/doc_stride.
# Needs: a release build (cargo build --release), ../shared/data/korquad, and a Python with
# tools/requirements.txt installed (PYTHON, default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=target/release/pipeline
CFG=configs/korquad-tiny.toml
DATA=../shared/data/korquad/KorQuAD_v1.0_dev.json
REPS=${REPS:-3}
[ -f "$DATA" ] || { echo "no $DATA: nothing to benchmark"; exit 1; }
$BIN run prepare -q --config $CFG --set run.name=bench-prepare            # trains the tokenizer once
TOK=outputs/bench-prepare/prepare/tokenizer
best_rust=999; best_win=999; best_hf=999; best_hfwin=999
for i in $(seq "$REPS"); do
  s=$(date +%s.%N)
  $BIN run prepare -q --force --config $CFG --set run.name=bench-prepare --set prepare.tokenizer=$TOK
  e=$(date +%s.%N)
  t=$(echo "$e - $s" | bc -l)
  w=$($PY -c "import json;print(json.load(open('outputs/bench-prepare/prepare/manifest.json'))['summary']['seconds']['windows'])")
  best_rust=$(echo "if ($t < $best_rust) $t else $best_rust" | bc -l)
  best_win=$(echo "if ($w < $best_win) $w else $best_win" | bc -l)
  hf=$($PY bench/prepare_hf.py $DATA $TOK 256 64)
  ht=$(echo "$hf" | $PY -c "import json,sys;print(json.load(sys.stdin)['total_s'])")
  hw=$(echo "$hf" | $PY -c "import json,sys;print(json.load(sys.stdin)['windows_s'])")
  best_hf=$(echo "if ($ht < $best_hf) $ht else $best_hf" | bc -l)
  best_hfwin=$(echo "if ($hw < $best_hfwin) $hw else $best_hfwin" | bc -l)
done
printf 'windows (tokenise + label), best of %s:  pipeline %.3fs   HF %.3fs   ratio %.1fx\n' "$REPS" "$best_win" "$best_hfwin" "$(echo "$best_hfwin / $best_win" | bc -l)"
printf 'whole stage (load..write) vs HF load+windows: pipeline %.3fs   HF %.3fs   ratio %.1fx\n' "$best_rust" "$best_hf" "$(echo "$best_hf / $best_rust" | bc -l)"
$PY -c "import json;m=json.load(open('outputs/bench-prepare/prepare/manifest.json'))['summary'];print('pipeline windows:', m['windows'])"
echo "$hf" | $PY -c "import json,sys;print('HF windows:', json.load(sys.stdin)['windows'])"
