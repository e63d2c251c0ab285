"""GUIDE's mechanism, measured: where does guided replay land compared with unguided replay drawn
from the same noise and the same old-class labels?

Per replay sample, two views:
- an *oracle* classifier, trained on every real training image of the run, says whether the sample
  is still its conditioned old class: p_oracle(y | x) and whether argmax p_oracle = y (the latter,
  on unguided replay, is the replay-quality number of the diffusion model);
- the *current* classifier (the one being trained, as it stood when the replay was generated) says
  how close the sample sits to the current task: the probability mass it puts on the current task's
  classes (softmax over the classes seen so far) and whether its prediction is a current-task class.

GUIDE's claim is that guidance moves replay toward the old/new boundary: the current-task mass
rises while the oracle still recognises the old class. Nothing here knows about files or stages.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STATS = ("oracle_label_prob", "oracle_accuracy", "current_mass", "current_pred_fraction")
VIEWS = ("guided", "unguided")


@torch.no_grad()
def replay_stats(images: Tensor, labels: Tensor, *, oracle: nn.Module, classifier: nn.Module,
                 num_seen: int, current: range) -> dict[str, Tensor]:
    """Per-sample values of each of `STATS` (float tensors [N]) for replay `images` of old `labels`."""
    oracle_was, classifier_was = oracle.training, classifier.training
    oracle.eval(), classifier.eval()
    p_oracle = F.softmax(oracle(images).float(), dim=1)
    p_current = F.softmax(classifier(images)[:, :num_seen].float(), dim=1)
    oracle.train(oracle_was), classifier.train(classifier_was)
    pred = p_current.argmax(1)
    return {
        "oracle_label_prob": p_oracle.gather(1, labels[:, None]).squeeze(1),
        "oracle_accuracy": (p_oracle.argmax(1) == labels).float(),
        "current_mass": p_current[:, current.start : current.stop].sum(1),
        "current_pred_fraction": ((pred >= current.start) & (pred < current.stop)).float(),
    }


class ReplayProbe:
    """Sums `replay_stats` of guided replay and of its unguided twin over every chunk of a shard."""

    def __init__(self, oracle: nn.Module, num_seen: int, current: range):
        self.oracle, self.num_seen, self.current = oracle, num_seen, current
        self.count = 0
        self.sums = {view: dict.fromkeys(STATS, 0.0) for view in VIEWS}

    def add(self, guided: Tensor, unguided: Tensor, labels: Tensor, classifier: nn.Module) -> None:
        """One chunk: guided replay, the unguided replay from the same noise and labels, and the
        current classifier as it stood when the chunk was generated."""
        for view, images in zip(VIEWS, (guided, unguided)):
            stats = replay_stats(images, labels, oracle=self.oracle, classifier=classifier,
                                 num_seen=self.num_seen, current=self.current)
            for k, v in stats.items():
                self.sums[view][k] += float(v.double().sum())
        self.count += len(labels)

    def state_dict(self) -> dict:
        return {"count": self.count, "sums": {view: dict(sums) for view, sums in self.sums.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.sums = state["count"], {view: dict(sums) for view, sums in state["sums"].items()}

    def result(self) -> dict:
        """Means per view, and guided − unguided per statistic."""
        if not self.count:
            raise ValueError("ReplayProbe.result: no replay was measured")
        means = {view: {k: round(s / self.count, 6) for k, s in sums.items()} for view, sums in self.sums.items()}
        delta = {k: round(means["guided"][k] - means["unguided"][k], 6) for k in STATS}
        return {"count": self.count, **means, "delta": delta}
