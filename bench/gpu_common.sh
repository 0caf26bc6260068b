# Sourced by bench/gpu_session.sh and bench/gpu_diag.sh: log to $OUT/$LOG, time-capped steps
# under a global deadline (DEADLINE seconds from the start), the unpacked binary in $BIN and,
# when gpu/korquad.json.gz was carried, KorQuAD where configs/korquad-tiny.toml looks for it.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/$LOG") 2>&1
T0=$(date +%s)
now() { echo $(($(date +%s) - T0)); }
say() { echo "[$(now)s] $*" >&2; }
# cap N: seconds a step may take (at most N, at most what is left before the deadline)
cap() { local left=$((DEADLINE - $(now))); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }
step() { # step NAME MAX_S CMD...: runs CMD under its cap, logs rc and time
  local name=$1 max=$2; shift 2
  local c; c=$(cap "$max")
  if [ "$c" -lt 10 ]; then say "SKIP $name (no time left)"; return 99; fi
  say "BEGIN $name (cap ${c}s)"
  local t=$(date +%s)
  timeout -k 5 "$c" "$@"; local rc=$?
  say "END $name rc=$rc in $(($(date +%s) - t))s"
  return $rc
}
BIN=/tmp/pipeline
gunzip -c gpu/pipeline.gz >$BIN && chmod +x $BIN || { say "no gpu/pipeline.gz"; exit 1; }
if [ -f gpu/korquad.json.gz ] && [ ! -f ../shared/data/korquad/KorQuAD_v1.0_dev.json ]; then
  mkdir -p ../shared/data/korquad && gunzip -c gpu/korquad.json.gz >../shared/data/korquad/KorQuAD_v1.0_dev.json
fi
