#!/usr/bin/env bash
# Paper 4 at small scale: a VQ-VAE trained by hard EM or soft EM (Roy et al. 2018) at the
# same budget (model, epochs, batch, learning rate, seed), on scikit-learn's digits.
#
#     bash experiments/vqvae/run_digits.sh                     # every row, seeds 0 and 1
#     RUNS="hard-k64 soft-k64" SEEDS=0 bash experiments/vqvae/run_digits.sh
#     JOBS=2 bash experiments/vqvae/run_digits.sh              # two runs at a time
#
# Each run writes $OUT/<row>-seed<s>/ (metrics.jsonl, vq_test_metrics.json,
# learning_curve.png, samples.png, reconstructions.png, codebook_usage.png, checkpoints,
# log.txt); its "test:" line is echoed. At the end summarize.py prints README.md's tables. EXTRA adds flags to
# every run (e.g. EXTRA="--device cuda"); THREADS sets OMP_NUM_THREADS of each run when
# JOBS > 1 (default 1).
set -euo pipefail
OUT="${OUT:-runs/vqvae-digits}"
JOBS="${JOBS:-1}"
# the model: encoder/decoder 64 wide with 2 residual blocks each, 2x2 latents of D=16,
# 3 logistic mixtures per pixel; 40 epochs (920 steps) of Adam at 2e-3, cosine decay
COMMON=(--dataset digits --epochs 40 --batch-size 64 --lr 2e-3 --width 64 --blocks 2
        --downsample 2 --code-dim 16 --mixtures 3 --beta 0.25 --no-progress --overwrite)
declare -A FLAGS=(
  [hard-k64]="--em hard --codes 64 --decay 0.99"
  [soft-k64]="--em soft --codes 64 --decay 0.99 --samples 10"
  [hard-k256]="--em hard --codes 256 --decay 0.99"
  [soft-k256]="--em soft --codes 256 --decay 0.99 --samples 10"
  [hard-k256-d999]="--em hard --codes 256 --decay 0.999"
  [soft-k256-d999]="--em soft --codes 256 --decay 0.999 --samples 10"
  [hard-k256-reinit]="--em hard --codes 256 --decay 0.99 --reinit-dead"
  [soft-k256-t05]="--em soft --codes 256 --decay 0.99 --samples 10 --temperature 0.5"
)
RUNS="${RUNS:-hard-k64 soft-k64 hard-k256 soft-k256 hard-k256-d999 soft-k256-d999
             hard-k256-reinit soft-k256-t05}"
SEEDS="${SEEDS:-0 1}"

one() {  # one run: <row> <seed>
  local name=$1 seed=$2
  local dir="$OUT/$name-seed$seed"
  mkdir -p "$dir"
  echo "=== $name seed $seed: dqk train vqvae ${COMMON[*]} ${FLAGS[$name]} --seed $seed ${EXTRA:-}"
  # shellcheck disable=SC2086
  dqk train vqvae "${COMMON[@]}" ${FLAGS[$name]} --seed "$seed" ${EXTRA:-} --out "$dir" \
    > "$dir/log.txt" 2>&1
  grep -E "^test:" "$dir/log.txt" | sed "s/^/$name seed $seed: /"
}

for name in $RUNS; do
  [[ -n "${FLAGS[$name]:-}" ]] || { echo "unknown row $name" >&2; exit 2; }
done
if [[ "$JOBS" -gt 1 ]]; then
  export OMP_NUM_THREADS="${THREADS:-1}"
fi
running=0
for name in $RUNS; do
  for seed in $SEEDS; do
    one "$name" "$seed" &
    running=$((running + 1))
    if [[ "$running" -ge "$JOBS" ]]; then
      wait -n
      running=$((running - 1))
    fi
  done
done
wait
python "$(dirname "$0")/summarize.py" "$OUT"
