#!/usr/bin/env bash
# Replay quality vs diffusion budget on the default run (mnist5k/5), unguided replay (guidance.scale=0,
# i.e. gr), one seed: queued DVC experiments on the committed params.yaml, then one table.
#   bash results/diffusion_size/run.sh [SEED]      (from the repository root, in the venv)
# Writes results/diffusion_size/seed$SEED.csv: per experiment, the diffusion settings, the oracle's
# accuracy on unguided replay (every replay shard), final and average incremental accuracy.
set -euo pipefail
seed=${1:-0}
export DVC_NO_ANALYTICS=1
for cfg in "700 400 200" "700 400 800" "1000 600 800" "1500 900 800" "2000 1200 800" "2000 1200 200"; do
  set -- $cfg
  dvc exp run --queue -S guidance.scale=0 -S run.seed=$seed -S diffusion.steps_first=$1 \
    -S diffusion.steps_later=$2 -S rehearsal.per_task=$3
done
dvc queue start -j 1
while dvc queue status | grep -qE '(Queued|Running)\s*$'; do sleep 30; done
dvc queue status
python - "$seed" <<'PY'
import sys
from pathlib import Path
import pandas as pd
from pipeline.sweep import experiments
seed = int(sys.argv[1])
rows = []
for e in experiments(Path(".")):
    p, s = e["params"], e["summary"]
    if p["run.seed"] != seed or p["guidance.scale"] != 0:
        continue
    rows.append({"steps_first": p["diffusion.steps_first"], "steps_later": p["diffusion.steps_later"],
                 "rehearsal_per_task": p["rehearsal.per_task"],
                 "replay_oracle_accuracy": s["replay"]["unguided"]["oracle_accuracy"],
                 "replay_oracle_label_prob": s["replay"]["unguided"]["oracle_label_prob"],
                 "oracle_test_accuracy": s["oracle_test_accuracy"],
                 "final_average_accuracy": s["final_average_accuracy"],
                 "average_incremental_accuracy": s["average_incremental_accuracy"], "experiment": e["name"]})
df = pd.DataFrame(rows).drop_duplicates(["steps_first", "steps_later", "rehearsal_per_task"])
df = df.sort_values(["steps_first", "rehearsal_per_task"])
df.to_csv(f"results/diffusion_size/seed{seed}.csv", index=False, float_format="%.4f")
print(df.to_string(index=False))
PY
