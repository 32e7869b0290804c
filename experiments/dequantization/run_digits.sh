#!/usr/bin/env bash
# Paper 1 at small scale: the same flow and the same budget (epochs, batch, learning-rate
# schedule, seed) with five dequantization/objective choices, on scikit-learn's digits.
#
#     bash experiments/dequantization/run_digits.sh            # all five, one after another
#     RUNS="uniform-elbo ard-elbo" bash experiments/dequantization/run_digits.sh
#
# Each run writes runs/dequant-digits/<name>/ (metrics.jsonl, learning_curve.png,
# samples.png, checkpoints); the final line of each run is its test bits/dim from the
# importance-weighted bound with 1000 samples per test image. EXTRA adds flags to every
# run (e.g. EXTRA="--device cuda").
set -euo pipefail
OUT="${OUT:-runs/dequant-digits}"
# the flow: 2 scales x 2 steps of mixture-of-logistics couplings (K=4), nets 32 wide
COMMON=(--dataset digits --epochs 15 --batch-size 64 --lr 1e-3 --warmup-steps 100
        --seed 0 --width 32 --steps 2 --blocks 1 --components 4 --dequant-steps 2
        --eval-samples 1000 --epoch-eval-samples 8 --no-progress --overwrite)
declare -A FLAGS=(
  [uniform-elbo]="--dequant uniform --objective elbo"
  [uniform-iw]="--dequant uniform --objective iw --samples 4"
  [uniform-renyi]="--dequant uniform --objective renyi --samples 4 --alpha 0.5"
  [variational-elbo]="--dequant variational --objective elbo"
  [ard-elbo]="--dequant ard --objective elbo"
)
RUNS="${RUNS:-uniform-elbo uniform-iw uniform-renyi variational-elbo ard-elbo}"
for name in $RUNS; do
  echo "=== $name: dqk train flow ${COMMON[*]} ${FLAGS[$name]} ${EXTRA:-}"
  # shellcheck disable=SC2086
  dqk train flow "${COMMON[@]}" ${FLAGS[$name]} ${EXTRA:-} --out "$OUT/$name"
done
