#!/usr/bin/env bash
# Rebuild every bundled model from ../shared/data: prepare -> fit -> export -> calibrate -> evaluate -> bench.
# The fits are what made the committed weights (each on one H100, ~5 min, two side by side); on a CPU they take
# hours. Evaluation and benchmarks run on the CPU. Usage: bash training/make_bundles.sh [DATA_DIR]
set -euo pipefail
DATA=${1:-../shared/data}
MODELS=Resources/Models
mkdir -p cache runs

python -m training prepare --dataset "$DATA/lgg_flair" --split train --modality flair --out cache/lgg_flair_train.npz
python -m training prepare --dataset "$DATA/ixi_t1" --split train --modality t1 --out cache/ixi_t1_train.npz
fit="python -m training fit --batch-size 32 --seed 0 --device auto"
$fit --data cache/lgg_flair_train.npz --run-dir runs/patchgan-flair --epochs 600 --sign positive --uncertainty
$fit --data cache/lgg_flair_train.npz --run-dir runs/patchgan-flair-paper --epochs 600 --sign positive
$fit --data cache/ixi_t1_train.npz --run-dir runs/patchgan-t1 --epochs 100 --sign absolute --uncertainty

# the paper's baselines (issue "The paper's comparison"): on this 2-core CPU, OCSVM < 1 s, AE ~4 min, ALOCC ~9 min
python -m training fit --method ocsvm --data cache/lgg_flair_train.npz --run-dir runs/ocsvm-flair --seed 0 --patch 32
python -m training fit --method ae --data cache/lgg_flair_train.npz --run-dir runs/ae-flair --epochs 40 --lr 1e-3 \
    --seed 0 --device cpu
python -m training fit --method alocc --data cache/lgg_flair_train.npz --run-dir runs/alocc-flair --epochs 40 \
    --seed 0 --device cpu

python -m training fit --method intensity --modality flair --sign positive --run-dir runs/intensity-flair
python -m training fit --method intensity --modality t1 --sign negative --run-dir runs/intensity-t1

for model in patchgan-flair patchgan-flair-paper patchgan-t1 ocsvm-flair ae-flair alocc-flair intensity-flair \
    intensity-t1; do
    python -m training export --run runs/$model --name $model --out $MODELS/$model
done

evaluate="python -m training evaluate --split test --device cpu --update-card"
for model in patchgan-flair patchgan-flair-paper intensity-flair ocsvm-flair ae-flair alocc-flair; do
    python -m training calibrate --model $model --dataset "$DATA/lgg_flair" --split val --device cpu
done
for model in patchgan-flair patchgan-flair-paper intensity-flair; do  # per-case reports; baselines: see compare
    for dataset in lgg_flair brats2013 mslub; do
        $evaluate --model $model --dataset "$DATA/$dataset" --out docs/results/$model/$dataset
    done
done
for model in patchgan-flair patchgan-flair-paper; do  # the paper's Table 2: without patch ranking
    for dataset in lgg_flair brats2013 mslub; do
        $evaluate --model $model --dataset "$DATA/$dataset" --ablation "ranking off" \
            --out docs/results/$model-no-ranking/$dataset
    done
done
for model in patchgan-t1 intensity-t1; do
    python -m training calibrate --model $model --dataset "$DATA/ixi_t1" --split val --device cpu
    for dataset in ixi_t1 mslub; do
        $evaluate --model $model --dataset "$DATA/$dataset" --out docs/results/$model/$dataset
    done
done
# the paper's Table 1 and 2, Figs. 3 and 6 on our data (also stores each model's metrics in its card)
python -m training compare --models patchgan-flair patchgan-flair-paper alocc-flair ocsvm-flair ae-flair \
    intensity-flair --data-root "$DATA" --out docs/comparison --device cpu --update-cards
for model in patchgan-flair patchgan-t1; do
    python -m training bench --model $model --device cpu --update-card
done

# PathoSCOPE, few-shot (issue 5), on the CPU in about a minute: 8 reference cases drawn with seed 0 from lgg_flair
# train, the default random-initialised backbone; then the few-shot tables (Tables 1 and 3, about 1.5 h on 2 cores)
python -m training fit --method pathoscope --data cache/lgg_flair_train.npz --run-dir runs/pathoscope-flair \
    --shots 8 --seed 0
python -m training export --run runs/pathoscope-flair --name pathoscope-flair --out $MODELS/pathoscope-flair
python -m training calibrate --model pathoscope-flair --dataset "$DATA/lgg_flair" --split val --device cpu
for dataset in lgg_flair brats2013 mslub; do
    $evaluate --model pathoscope-flair --dataset "$DATA/$dataset" --out docs/results/pathoscope-flair/$dataset
done
python -m training bench --model pathoscope-flair --device cpu --update-card
python -m training fewshot --data cache/lgg_flair_train.npz --data-root "$DATA" --out docs/fewshot --draws 2 \
    --ablation-draws 1
