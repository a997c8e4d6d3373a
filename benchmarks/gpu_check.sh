#!/usr/bin/env bash
# One full default training (and the same without CUDA graphs, the baseline), one evaluation
# and the speed benchmark on a CUDA GPU.
#   bash benchmarks/gpu_check.sh OUT [DATA]      (DATA: a prepared folder, default data)
# DEVICE (default cuda), TRAIN_ARGS and BENCH_ARGS (extra options) shorten a trial run on a CPU;
# a non-empty OUT is refused unless OVERWRITE=1.
# Writes into OUT: facts.txt (GPU, torch, CPU cores), times.txt (wall seconds and exit status of
# each step), train.log, train_eager.log, eval.log, bench.txt, bench_DEVICE.json and run.tgz
# (the run folder with its checkpoint, config, history and test metrics; the baseline's logs).
set -u -o pipefail
out=${1:?usage: gpu_check.sh OUT [DATA]}
data=${2:-data}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
if [ -n "$(ls -A "$out" 2>/dev/null)" ] && [ "${OVERWRITE:-0}" != 1 ]; then
  echo "error: $out is not empty; give a new folder, or OVERWRITE=1 to replace its files" >&2
  exit 1
fi
mkdir -p "$out"
work=$(mktemp -d)

{ nvidia-smi -L
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name())"
  echo "cpu cores: $(nproc)"; } >"$out/facts.txt" 2>&1

step() {  # step NAME LIMIT_S CMD...: run CMD, log its wall time and exit status
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s.%N)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $(date +%s.%N) - $t0}")" >>"$out/times.txt"
}

rm -f "$out/times.txt"  # appended to below
step train 200 "$py" -m busseg train --config configs/busi.yaml --data "$data" \
  --out "$work/run" --device "$device" --no-progress ${TRAIN_ARGS:-}
# the baseline: the same training with the forward / backward launched eagerly
step train_eager 200 "$py" -m busseg train --config configs/busi.yaml --data "$data" \
  --out "$work/run_eager" --device "$device" --no-progress --set cuda_graph=false \
  ${TRAIN_ARGS:-}
step eval 60 "$py" -m busseg evaluate --checkpoint "$work/run/unet_final.pt" \
  --data "$data/test" --out "$work/run/eval_test" --plain --device "$device"
step bench 120 "$py" benchmarks/bench_speed.py --device "$device" --json "$out/bench_$device.json" \
  ${BENCH_ARGS:-}
mv "$out/bench.log" "$out/bench.txt"
tar czf "$out/run.tgz" -C "$work" --exclude='*.png' --exclude=last.pt \
  --exclude=run_eager/unet_final.pt run run_eager
cat "$out/times.txt"
