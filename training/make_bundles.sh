#!/usr/bin/env bash
# Rebuild every bundled model from ../shared/data: prepare -> fit -> export -> calibrate -> evaluate -> bench.
# The fits are what made the committed weights (run on one H100: ~5 min each, run side by side); on a CPU they take
# hours. Evaluation and benchmarks run on the CPU. Usage: bash training/make_bundles.sh [DATA_DIR]
set -euo pipefail
DATA=${1:-../shared/data}
MODELS=Resources/Models
mkdir -p cache runs

python -m training prepare --dataset "$DATA/lgg_flair" --split train --modality flair --out cache/lgg_flair_train.npz
python -m training prepare --dataset "$DATA/ixi_t1" --split train --modality t1 --out cache/ixi_t1_train.npz
python -m training fit --data cache/lgg_flair_train.npz --run-dir runs/patchgan-flair --epochs 600 --batch-size 32 \
    --seed 0 --sign positive --device auto
python -m training fit --data cache/ixi_t1_train.npz --run-dir runs/patchgan-t1 --epochs 100 --batch-size 32 \
    --seed 0 --sign absolute --device auto

python -m training export --run runs/patchgan-flair --name patchgan-flair --out $MODELS/patchgan-flair
python -m training export --run runs/patchgan-t1 --name patchgan-t1 --out $MODELS/patchgan-t1
python -m training export --method intensity --name intensity-flair --modality flair --sign positive \
    --out $MODELS/intensity-flair
python -m training export --method intensity --name intensity-t1 --modality t1 --sign negative --out $MODELS/intensity-t1

for model in patchgan-flair intensity-flair; do
    python -m training calibrate --model $model --dataset "$DATA/lgg_flair" --split val --device cpu
    for dataset in lgg_flair brats2013 mslub; do
        python -m training evaluate --model $model --dataset "$DATA/$dataset" --split test --device cpu \
            --out docs/results/$model/$dataset --update-card
    done
done
for dataset in lgg_flair brats2013 mslub; do  # the paper's Table 2: Patch-GAN without patch ranking
    python -m training evaluate --model patchgan-flair --dataset "$DATA/$dataset" --split test --device cpu \
        --ranking off --out docs/results/patchgan-flair-no-ranking/$dataset --update-card
done
for model in patchgan-t1 intensity-t1; do
    python -m training calibrate --model $model --dataset "$DATA/ixi_t1" --split val --device cpu
    for dataset in ixi_t1 mslub; do
        python -m training evaluate --model $model --dataset "$DATA/$dataset" --split test --device cpu \
            --out docs/results/$model/$dataset --update-card
    done
done
for model in patchgan-flair patchgan-t1; do
    python -m training bench --model $model --device cpu --update-card
done
