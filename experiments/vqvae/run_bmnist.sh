#!/usr/bin/env bash
# Hard vs soft EM on binarized MNIST (../shared/data/binarized_mnist, 50,000 training and
# 10,000 test images of 28x28) at the same budget: 3 epochs (2,346 steps), the default
# model of `dqk train vqvae` (64 wide, 7x7 latents of D=16, K=256 codes, decay 0.99), seed 0.
# About 4.5 minutes per run on two CPU cores.
#
#     bash experiments/vqvae/run_bmnist.sh
#     RUNS="soft-k256" bash experiments/vqvae/run_bmnist.sh
set -euo pipefail
OUT="${OUT:-runs/vqvae-bmnist}"
declare -A FLAGS=(
  [hard-k256]="--em hard"
  [soft-k256]="--em soft --samples 10"
  [hard-k256-reinit]="--em hard --reinit-dead"
)
mkdir -p "$OUT"
for name in ${RUNS:-hard-k256 soft-k256 hard-k256-reinit}; do
  dir="$OUT/$name-seed0"
  echo "=== $name: dqk train vqvae --dataset binarized_mnist --codes 256 --epochs 3 ${FLAGS[$name]}"
  # shellcheck disable=SC2086
  dqk train vqvae --dataset binarized_mnist --codes 256 --epochs 3 --seed 0 --no-progress \
      --overwrite --out "$dir" ${FLAGS[$name]} ${EXTRA:-} | tee "$dir.log" | grep "^test:"
done
