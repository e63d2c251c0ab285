"""Per old class: how the oracle recognises the replay each task's classifier trained on, and where
the final classifier sends each class's real test images. Reads the workspace's outputs of a finished
run (online replay shards, the oracle, the last classifier):

    python benchmarks/replay_per_class.py            # after `dvc repro` (or `dvc exp apply …`)
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guide.io import load_checkpoint, load_shard  # noqa: E402
from params import load_params  # noqa: E402
from stages import paths  # noqa: E402
from stages.common import Context  # noqa: E402


def main() -> None:
    p = load_params("params.yaml")
    last = p.data.num_tasks - 1
    ctx = Context("evaluate", p, task=last, round=0)
    oracle = ctx.new_classifier()
    oracle.load_state_dict(load_checkpoint(paths.ORACLE)["model"])
    oracle.eval()
    for t in range(1, last + 1):
        shard = load_shard(paths.replay(t, None))
        x, y = shard["images"], shard["labels"]
        with torch.no_grad():
            pred = oracle(x).argmax(1)
        cells = ", ".join(f"{c}: {float((pred[y == c] == c).float().mean()):.3f} ({int((y == c).sum())})"
                          for c in range(int(y.max()) + 1))
        print(f"task {t} replay, oracle accuracy per old class (count): {cells}")
    clf, _ = ctx.load_classifier(ctx.final_classifier(last))
    clf.eval()  # running BN statistics, as the evaluate stage predicts
    with torch.no_grad():
        pred = clf(ctx.data.test_x).argmax(1)
    n = ctx.data.num_classes
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((ctx.data.test_y, pred), torch.ones_like(pred), accumulate=True)
    tasks = ctx.tasks
    clf.train()  # diagnosis only: batch statistics of the whole test set instead of the running ones
    with torch.no_grad():
        batch_pred = clf(ctx.data.test_x).argmax(1)
    clf.eval()
    for name, pr in (("running BN statistics (as evaluated)", pred), ("test-batch BN statistics (diagnosis)", batch_pred)):
        accs = [float((pr[torch.isin(ctx.data.test_y, torch.tensor(list(c)))] ==
                       ctx.data.test_y[torch.isin(ctx.data.test_y, torch.tensor(list(c)))]).float().mean()) for c in tasks]
        print(f"final classifier per task, {name}: " + ", ".join(f"{a:.3f}" for a in accs)
              + f"; mean {sum(accs) / len(accs):.3f}")
    print(f"final classifier, real test images: row = true class, column = predicted ({n} classes)")
    for c in range(n):
        print(f"  {c}: " + " ".join(f"{v:4d}" for v in confusion[c].tolist()))


if __name__ == "__main__":
    main()
