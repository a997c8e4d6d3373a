#!/usr/bin/env bash
# Cross-validation of configs/busi_presence.yaml without its three additions over the earlier recipe
# (presence head, depth gain ramp, 15% normal draws): same folds, schedule and seed.
set -euo pipefail
OUT=${OUT:-runs/cv_plain_recipe}
busseg cv --config configs/busi_presence.yaml --out "$OUT" --no-progress \
  --set model.presence_head=false --set augment.ramp=0 --set normal_share=0.1 "$@"
