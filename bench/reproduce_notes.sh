#!/usr/bin/env bash
# Reproduce the notes' seed figures that need PCam, the DINOv3 ViT-S/16 weights and a GPU, and print
# each beside the notes' figure (bench/RESULTS.md, "The notes' seed figures"):
#
#   bash bench/reproduce_notes.sh PCAM_DIR WEIGHTS [RESULTS_DIR]
#
# PCAM_DIR holds the eight camelyonpatch_level_2_split_*.h5 files (python -m trainables.data_cli);
# WEIGHTS is a local DINOv3 ViT-S/16 directory or facebook/dinov3-vits16-pretrain-lvd1689m.
# Each fine-tune runs the notes' recipe (224 px, 8 epochs, dihedral TTA) in this process on this
# machine's device, uncompressed (every tau = 1): hours on one GPU. SMOKE=1 runs the same commands on
# generated data and random weights in minutes (a check of the script, not of the figures).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${SMOKE:-0}" == 1 ]]; then
    DATA=unused WEIGHTS=unused RESULTS=${1:-results-notes-smoke}
    SHRINK=(--smoke)
else
    DATA=${1:?usage: bash bench/reproduce_notes.sh PCAM_DIR WEIGHTS [RESULTS_DIR]}
    WEIGHTS=${2:?usage: bash bench/reproduce_notes.sh PCAM_DIR WEIGHTS [RESULTS_DIR]}
    RESULTS=${3:-results-notes}
    SHRINK=(--set "data.root=$DATA" --set "model.weights=$WEIGHTS")
fi
RECIPE=(--preset pcam-local --results-dir "$RESULTS" "${SHRINK[@]}" --set data.image_size=224
        --set compress.tau_heads=1 --set compress.tau_mlp=1 --set compress.tau_svd=1)
[[ "${SMOKE:-0}" == 1 ]] || RECIPE+=(--set finetune.epochs=8)

auroc() {  # run one uncompressed trial in this process; print its validation AUROC
    python tune/run.py "${RECIPE[@]}" --debug-trial "$@" | awk '$1 == "val_auroc" {print $2}'
}

echo "figure                                   notes    measured"
printf '%-40s %-8s %s\n' "PCam AUROC, full fine-tune" 0.9800 "$(auroc --set finetune.method=full)"
printf '%-40s %-8s %s\n' "PCam AUROC, LoRA r 8 q/k/v/o + MLP" 0.9746 "$(auroc)"
if [[ "${SMOKE:-0}" == 1 ]]; then
    params="$(python bench/bench_seed_params.py | awk '/notes. seed/ {print $(NF-1)}') (random init)"
else
    params="$(python bench/bench_seed_params.py --weights "$WEIGHTS" | awk '/notes. seed/ {print $(NF-1)}') (pretrained weights, not fine-tuned)"
fi
printf '%-40s %-8s %s\n' "params at tau [0.89, 0.975, 0.975]" -7.0% "$params"
echo "token pruning speed-up (notes 1.85x): python bench/bench_tokens.py --rounds 7 (CPU, any weights: timing only)"
echo "SVD taps +4.16 points: not scripted (the DeiT log's 100-class data is not a dataset this project loads)"
