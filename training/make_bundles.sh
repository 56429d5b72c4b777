#!/usr/bin/env bash
# Rebuild every bundled model from ../shared/data: prepare -> fit -> export (-> configure) -> calibrate -> evaluate
# -> compare -> bench. Stages can be run alone: bash training/make_bundles.sh [DATA_DIR] [STAGE ...] with STAGE one
# of prepare fit export calibrate evaluate compare bench fewshot scrps (default: all, in that order); FLAIR_MODELS and
# T1_MODELS in the environment limit the models.
# The Patch-GAN fits are what made the committed weights (each on one H100, ~5 min, two side by side; on this 2-core
# CPU they take hours); the other fits, calibration, evaluation and benchmarks ran on the 2-core CPU.
set -euo pipefail
DATA=${1:-../shared/data}
shift || true
STAGES=${*:-prepare fit export calibrate evaluate compare bench fewshot scrps}
MODELS=Resources/Models
FLAIR_MODELS=${FLAIR_MODELS-"patchgan-flair patchgan-flair-paper intensity-flair ocsvm-flair ae-flair alocc-flair \
pathoscope-flair dae-flair"}
T1_MODELS=${T1_MODELS-"patchgan-t1 intensity-t1"}
mkdir -p cache runs

prepare() {
    python -m training prepare --dataset "$DATA/lgg_flair" --split train --modality flair --out cache/lgg_flair_train.npz
    python -m training prepare --dataset "$DATA/ixi_t1" --split train --modality t1 --out cache/ixi_t1_train.npz
}

fit() {
    local fit="python -m training fit --batch-size 32 --seed 0 --device auto"
    $fit --data cache/lgg_flair_train.npz --run-dir runs/patchgan-flair --epochs 600 --sign positive --uncertainty
    $fit --data cache/lgg_flair_train.npz --run-dir runs/patchgan-flair-paper --epochs 600 --sign positive
    $fit --data cache/ixi_t1_train.npz --run-dir runs/patchgan-t1 --epochs 100 --sign absolute --uncertainty
    # the paper's baselines: on the 2-core CPU, OCSVM < 1 s, AE ~4 min, ALOCC ~9 min
    python -m training fit --method ocsvm --data cache/lgg_flair_train.npz --run-dir runs/ocsvm-flair --seed 0 --patch 32
    python -m training fit --method ae --data cache/lgg_flair_train.npz --run-dir runs/ae-flair --epochs 40 --lr 1e-3 \
        --seed 0 --device cpu
    python -m training fit --method alocc --data cache/lgg_flair_train.npz --run-dir runs/alocc-flair --epochs 40 \
        --seed 0 --device cpu
    # the denoising autoencoder with coarse noise (Kascenas et al. 2022), on the CPU with one thread
    OMP_NUM_THREADS=1 python -m training fit --method dae --data cache/lgg_flair_train.npz --run-dir runs/dae-flair \
        --epochs 40 --batch-size 32 --seed 0 --device cpu --lr 1e-3
    # PathoSCOPE, few-shot: 8 reference cases drawn with seed 0 from lgg_flair train, on the CPU
    python -m training fit --method pathoscope --data cache/lgg_flair_train.npz --run-dir runs/pathoscope-flair \
        --shots 8 --seed 0
    python -m training fit --method intensity --modality flair --sign positive --run-dir runs/intensity-flair
    python -m training fit --method intensity --modality t1 --sign negative --run-dir runs/intensity-t1
}

export_bundles() {
    for model in $FLAIR_MODELS $T1_MODELS; do
        python -m training export --run runs/$model --name $model --out $MODELS/$model
    done
    # The flagship's inference settings, chosen on lgg_flair val + nichart_wmh val by
    # docs/analysis/patchgan_choices.py (0.1075: the robust brain spread of cache/lgg_flair_train.npz it prints)
    python -m training configure --model patchgan-flair --set map_smoothing=5 --set 'inference_shifts=[0, 8, 16, 24]' \
        --set intensity_prior=0.1075
}

# Each model's per-scan k (docs/analysis/per_scan_threshold.md, per_scan_t1.md; none: labels at the fixed
# threshold) and slice score (docs/analysis/slice_scores.md), all chosen on validation splits.
declare -A PER_SCAN_K=([patchgan-flair]=3.5 [intensity-flair]=3.5 [pathoscope-flair]=2.5 [patchgan-flair-paper]=3
                       [ae-flair]=3 [patchgan-t1]=3 [intensity-t1]=2.5 [scrps-t1]=3.5)
declare -A SLICE_SCORE=([patchgan-flair]=peak-z [intensity-flair]=peak-z)

calibrate_options() {
    local model=$1
    if [[ -n "${PER_SCAN_K[$model]:-}" ]]; then echo "--per-scan-k ${PER_SCAN_K[$model]}"; fi
    echo "--slice-score ${SLICE_SCORE[$model]:-method}"
}

calibrate() {
    # 1 % of healthy brain voxels (docs/analysis/operating_points.py), both FLAIR validation sources weighing the same
    for model in $FLAIR_MODELS; do
        python -m training calibrate --model $model --dataset "$DATA/lgg_flair" "$DATA/nichart_wmh" --split val \
            --device cpu $(calibrate_options $model)
    done
    for model in $T1_MODELS; do
        python -m training calibrate --model $model --dataset "$DATA/ixi_t1" --split val --device cpu \
            $(calibrate_options $model)
    done
}

evaluate() {
    # Test metrics with the datasets' brain masks come from compare (below); here what it does not do: the skull-on
    # lgg_flair test patients masked as mad-detect masks them without a given mask, and the T1 models.
    local evaluate="python -m training evaluate --split test --device cpu --update-card"
    for model in $FLAIR_MODELS; do
        $evaluate --model $model --dataset "$DATA/lgg_flair" --brain-mask auto --out docs/results/$model/lgg_flair-auto
    done
    for model in $T1_MODELS; do
        for dataset in ixi_t1 mslub; do
            $evaluate --model $model --dataset "$DATA/$dataset" --out docs/results/$model/$dataset
        done
        $evaluate --model $model --dataset "$DATA/ixi_t1" --brain-mask auto --out docs/results/$model/ixi_t1-auto
    done
}

compare() {
    # the paper's Tables 1 and 2, Figs. 3 and 6 on our data, every method's ablation rows included; each model's
    # test metrics go into its card and its per-case reports into docs/results/
    python -m training compare --models $FLAIR_MODELS --data-root "$DATA" --out docs/comparison --device cpu \
        --update-cards --reports docs/results
}

bench() {
    # every model with one thread, the network-heavy ones also with both cores (each figure a card entry)
    for model in $FLAIR_MODELS $T1_MODELS; do
        OMP_NUM_THREADS=1 python -m training bench --model $model --device cpu --update-card
    done
    for model in patchgan-flair patchgan-flair-paper patchgan-t1 pathoscope-flair dae-flair; do
        OMP_NUM_THREADS=2 python -m training bench --model $model --device cpu --update-card
    done
}

fewshot() {
    # PathoSCOPE's Tables 1 and 3 (about 1.5 h on 2 cores)
    python -m training fewshot --data cache/lgg_flair_train.npz --data-root "$DATA" --out docs/fewshot --draws 2 \
        --ablation-draws 1
}

scrps() {
    # SCRPS on T1 at the reduced configuration (80x64 slices at 2.4 mm, 10 x 256 codes), on this 2-core CPU, 1 thread:
    # the StyleGAN2 (8000 iterations planned; --max-minutes 110 per session, resumed until the time ran out at 6838
    # iterations, 2.3 h), then the encoder (5000 steps) and the repository (1200 slices, 10 Eq. 1 steps each)
    python -m training prepare --dataset "$DATA/ixi_t1" --split train --modality t1 --size 80 64 --spacing 2.4 \
        --out cache/ixi_t1_train_80x64.npz
    python -m training prepare --dataset "$DATA/ixi_t1" --split val --modality t1 --size 80 64 --spacing 2.4 \
        --out cache/ixi_t1_val_80x64.npz
    python -m training.stylegan_fit --data cache/ixi_t1_train_80x64.npz --run-dir runs/scrps-t1 --config reduced \
        --iterations 8000 --batch-size 16 --seed 0 --threads 1 --resume --max-minutes 110
    python -m training fit --method scrps --data cache/ixi_t1_train_80x64.npz --gan runs/scrps-t1 \
        --run-dir runs/scrps-t1-detector --encoder-steps 5000 --repository-steps 10 --threads 1 --device cpu
    python -m training export --run runs/scrps-t1-detector --name scrps-t1 --out $MODELS/scrps-t1
    # choices on ixi_t1 val with implanted T1 lesions (docs/scrps/choices.md), then the chosen settings
    python docs/scrps/scrps_choices.py --model $MODELS/scrps-t1 --data cache/ixi_t1_val_80x64.npz --out docs/scrps \
        --per-case 8 --threads 2
    python -m training configure --model scrps-t1 --set refine_steps=0  # the encoder alone held the val quality
    python -m training calibrate --model scrps-t1 --dataset "$DATA/ixi_t1" --split val --device cpu \
        $(calibrate_options scrps-t1)
    # the paper's Table 1 and Fig. 3 on ixi_t1 test + mslub T1 test, beside the other T1 models
    python docs/scrps/scrps_table.py --model $MODELS/scrps-t1 --baselines patchgan-t1 intensity-t1 \
        --data-root "$DATA" --out docs/scrps --steps 0 5 10 20 --update-card
    OMP_NUM_THREADS=2 python -m training bench --model scrps-t1 --device cpu --update-card
}

for stage in $STAGES; do
    case $stage in
        prepare) prepare ;; fit) fit ;; export) export_bundles ;; calibrate) calibrate ;; evaluate) evaluate ;;
        compare) compare ;; bench) bench ;; fewshot) fewshot ;; scrps) scrps ;;
        *) echo "unknown stage $stage" >&2; exit 2 ;;
    esac
done
