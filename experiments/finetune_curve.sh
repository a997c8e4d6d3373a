#!/usr/bin/env bash
# Fine-tuning demonstration on BUS-BRA (the external set): what adapting the shipped model to
# another hospital's scanners buys, against no adaptation and against training from scratch.
#   experiments/finetune_curve.sh PATH/TO/busbra_val [OUT]
# Splits the scans patient-wise (cases.csv `case`) into a 45% training half (+5% val) and a 50%
# test half, fine-tunes on 25, 50, 100 and all training scans, trains from scratch on the same
# scans, and scores every model on the test half (plain output: threshold 0.5, no TTA).
# These models are demonstrations only: the shipped model never trains on BUS-BRA.
# SCRATCH=0 skips the from-scratch trainings (their column does not depend on the shipped model).
set -euo pipefail
SCRATCH=${SCRATCH:-1}
BUSBRA=${1:?usage: finetune_curve.sh PATH/TO/busbra_val [OUT]}
OUT=${2:-runs/finetune}
DATA=$OUT/data
busseg prepare --raw "$BUSBRA" --out "$DATA" --table "$BUSBRA/cases.csv" --group-column case \
  --fractions 0.45,0.05,0.5
busseg evaluate --data "$DATA/test" --out "$OUT/eval_shipped"
busseg evaluate --data "$DATA/test" --out "$OUT/eval_shipped_plain" --plain
for N in 25 50 100 0; do
  busseg train --config configs/finetune.yaml --data "$DATA" --out "$OUT/ft_$N" --limit $N \
    --no-progress
  busseg evaluate --checkpoint "$OUT/ft_$N/unet_final.pt" --data "$DATA/test" \
    --out "$OUT/eval_ft_$N" --plain
  [ "$SCRATCH" = 0 ] && continue
  busseg train --config configs/busi_presence.yaml --data "$DATA" --out "$OUT/scratch_$N" --limit $N \
    --no-progress
  busseg evaluate --checkpoint "$OUT/scratch_$N/unet_final.pt" --data "$DATA/test" \
    --out "$OUT/eval_scratch_$N" --plain
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def row(name):
    if not (out / name / "metrics.json").is_file():
        return "-"
    m = json.loads((out / name / "metrics.json").read_text())
    lo, hi = m["dice_ci95"]
    return f"{m['dice']:.3f} ({lo:.3f}-{hi:.3f})"
print("| training scans | fine-tuned from the shipped model | trained from scratch |")
print("|---|---|---|")
for n in (25, 50, 100, 0):
    used = len(json.loads((out / f"ft_{n}" / "split_used.json").read_text())["train"])
    print(f"| {used} | {row(f'eval_ft_{n}')} | {row(f'eval_scratch_{n}')} |")
print(f"shipped model, no fine-tuning: {row('eval_shipped')} (shipped setting), "
      f"{row('eval_shipped_plain')} (plain)")
PY
