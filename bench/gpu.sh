#!/usr/bin/env bash
# The learner's speed on a GPU machine, one JSON line per measurement: sizes S, M, L, XL, 64x64
# images, batch 16x64, fp32 and bf16, each eager against compiled (with peak GPU memory).
# Needs only torch and numpy (learner/ and bench/train_step.py import nothing else), so it runs
# on a machine without Ray or environment packages; finishes in well under 8 minutes on an H200.
#   bash bench/gpu.sh                  # on the GPU machine
#   bash bench/gpu.sh --device cpu     # smoke test anywhere (debug model, short sequences)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEVICE=cuda
[ "${1:-}" = "--device" ] && DEVICE=${2:-cuda}
export TORCHINDUCTOR_FX_GRAPH_CACHE=1
CACHE=${HARMONYRAY_COMPILE_CACHE:-/tmp/harmonyray-inductor}
"$PY" -c 'import json, torch; print(json.dumps({"torch": torch.__version__, "cuda": torch.cuda.is_available(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))'
if [ "$DEVICE" = cpu ]; then
  runs=("debug fp32 --length 8 --image 16")
else
  runs=("S fp32" "S bf16" "M bf16" "L bf16" "XL fp32" "XL bf16")
fi
start=$SECONDS
for run in "${runs[@]}"; do
  set -- $run
  size=$1 precision=$2; shift 2
  if [ $((SECONDS - start)) -gt 400 ]; then  # keep the whole script under 8 minutes
    echo "{\"size\": \"$size\", \"precision\": \"$precision\", \"error\": \"skipped: time budget spent\"}"
    continue
  fi
  out=$(timeout 200 "$PY" -m bench.train_step --size "$size" --obs image --mode both --precision "$precision" \
        --device "$DEVICE" --steps 5 --warmup 3 --cache "$CACHE" "$@" 2>&1)
  line=$(printf '%s\n' "$out" | tail -n 1)
  case "$line" in
    "{"*) echo "$line" ;;
    *) printf '%s' "$line" | "$PY" -c 'import json, sys; print(json.dumps({"size": sys.argv[1], "precision": sys.argv[2], "error": sys.stdin.read()[-300:] or "timed out"}))' "$size" "$precision" ;;
  esac
done
