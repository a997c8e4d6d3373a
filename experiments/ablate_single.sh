#!/usr/bin/env bash
# One model (seed 0, train split) of the plain 50-epoch recipe with one addition each (presence
# head, depth gain ramp), evaluated with the plain output on the test split and on BUS-BRA.
#   BUSBRA=path/to/busbra_val experiments/ablate_single.sh
set -euo pipefail
BUSBRA=${BUSBRA:?set BUSBRA to the BUS-BRA folder (images/, masks/)}
B=(--config configs/busi_presence.yaml --no-progress --set augment.ramp=0 --set normal_share=0.1
   --set model.presence_head=false)
for variant in head:model.presence_head=true ramp:augment.ramp=0.3; do
  name=${variant%%:*}
  busseg train "${B[@]}" --out "runs/p50_$name" --set "${variant#*:}"
  busseg evaluate --checkpoint "runs/p50_$name/unet_final.pt" --data data/test \
    --out "runs/eval_test_p50_$name" --plain
  busseg evaluate --checkpoint "runs/p50_$name/unet_final.pt" --data "$BUSBRA" \
    --out "runs/eval_busbra_p50_$name" --plain
done
