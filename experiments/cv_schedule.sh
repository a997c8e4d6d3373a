#!/usr/bin/env bash
# Cross-validation of the shipped recipe's schedule as its weights saw it: the 130-epoch cosine
# (AdamW 1e-3, 3 warm-up epochs, EMA), stopped after 50 epochs with the last weights (the shipped
# weights were the best-by-val epoch 49 of that schedule). Same folds, seed and epoch count as
# experiments/cv_ablation.sh, whose 50-epoch cosine ends at 1% of the peak learning rate; bf16
# forced so every fold trains in the same precision; the width-16 / depth-4 shape of both, with
# BatchNorm (later --set options override them: --set amp=auto --set model.width=8 --set
# model.depth=5 --set model.norm=instance is the shipped recipe, now the defaults of busseg cv).
# Compare the two OOF results with
#   python experiments/compare_runs.py runs/cv_plain_recipe/oof/plain runs/cv_trunc130/oof/plain
set -euo pipefail
OUT=${OUT:-runs/cv_trunc130}
busseg cv --out "$OUT" --no-progress --set epochs=50 --set schedule_epochs=130 \
  --set select=last --set patience=20 --set min_epochs=0 --set amp=bf16 \
  --set model.width=16 --set model.depth=4 --set model.norm=batch "$@"
