#!/usr/bin/env bash
# The default run (mnist5k/5, guide, seed 0) at cheaper diffusion budgets, on the reference-exact code:
# one `pipeline.compare` per point (its --set), all in one scratch repository sharing the project's
# DVC cache, so a point that shares stages with another restores them. Each point writes
# results/diffusion_size/frontier/NAME/runs.json (final accuracy, replay metrics, wall time).
#   bash results/diffusion_size/frontier.sh [NAME ...]     (from the repository root, in the venv)
set -euo pipefail
declare -A POINTS=(
  [c16-s1000]="diffusion.unet.model_channels=16 diffusion.steps_first=1000 diffusion.steps_later=600"
  [c16-s2000]="diffusion.unet.model_channels=16"
  [c32-s1000]="diffusion.steps_first=1000 diffusion.steps_later=600"
  [c32-s700]="diffusion.steps_first=700 diffusion.steps_later=400"
  [c16-s1000-lr2e3]="diffusion.unet.model_channels=16 diffusion.steps_first=1000 diffusion.steps_later=600 diffusion.lr=0.002"
  [c16-s1400-i10]="diffusion.unet.model_channels=16 diffusion.steps_first=1400 diffusion.steps_later=840 classifier.interval=10"
  [c16-b32-s2000-i10]="diffusion.unet.model_channels=16 diffusion.batch_size=32 classifier.interval=10"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(c16-s1000 c16-s2000 c32-s1000 c32-s700)
for name in "${names[@]}"; do
  echo "== $name: ${POINTS[$name]}"
  python -m pipeline.compare --preset mnist5k --methods guide --seeds 0 --set ${POINTS[$name]} \
    --workdir compare-work/frontier --out "results/diffusion_size/frontier/$name"
done
