"""The mechanism metrics (guide.mechanism): guided replay toward the current task raises the current
classifier's mass on it, measured against the unguided twin from the same noise."""
import torch
from torch import nn

from guide.continual import METHODS, generate
from guide.replay import replay_guidance
from guide.diffusion import NoiseSchedule
from guide.mechanism import ReplayProbe, replay_stats


class Brightness(nn.Module):
    """A classifier whose answer is known: logits (−k·mean, +k·mean, 0, 0) — class 1 for bright
    images, class 0 for dark ones, never 2 or 3 when the mean is far from 0."""

    def __init__(self, k: float = 20.0):
        super().__init__()
        self.k = k

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-self.k * m, self.k * m, torch.zeros_like(m), torch.zeros_like(m)], 1)


def test_replay_stats_on_known_images():
    bright, dark = torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), -0.5)
    x, y = torch.cat([bright, dark]), torch.tensor([1, 1])
    s = replay_stats(x, y, oracle=Brightness(), classifier=Brightness(), num_seen=2, current=range(1, 2))
    assert s["oracle_accuracy"].tolist() == [1.0, 0.0]
    assert s["current_pred_fraction"].tolist() == [1.0, 0.0]
    assert s["current_mass"][0] > 0.99 and s["current_mass"][1] < 0.01
    # the oracle's softmax is over every class, the current classifier's over the classes seen
    assert s["oracle_label_prob"][0] > 0.999 and s["oracle_label_prob"][1] < 1e-8


def _probe(unet, method: str, scale: float) -> dict:
    schedule = NoiseSchedule.make("linear", 1000).respace("ddim10")
    clf, labels = Brightness(k=5.0), torch.zeros(32, dtype=torch.long)
    probe = ReplayProbe(oracle=Brightness(), num_seen=2, current=range(1, 2))
    factory = replay_guidance(METHODS[method], classifier=clf, prev_classifier=None, scale_min=scale,
                              scale_max=scale, num_seen=2, num_old=1, current=range(1, 2),
                              generator=torch.Generator().manual_seed(1))
    guided, _ = generate(unet, schedule, labels, batch_size=32, generator=torch.Generator().manual_seed(0),
                         guidance_for=factory)
    plain, _ = generate(unet, schedule, labels, batch_size=32, generator=torch.Generator().manual_seed(0))
    probe.add(guided, plain, labels, clf)
    return probe.result()


def test_guided_replay_raises_the_current_task_mass(tiny_unet):
    """Old class 0 replay guided toward the current task {1}: the guided samples get brighter, so the
    classifier's mass on class 1 rises with the scale and the oracle's belief in label 0 falls; gr
    measures no shift at all."""
    weak, strong, gr = _probe(tiny_unet, "guide", 0.5), _probe(tiny_unet, "guide", 2.0), _probe(tiny_unet, "gr", 2.0)
    assert strong["count"] == 32
    # measured: current-task mass 0.47 unguided → 0.56 at scale 0.5 → 0.63 at scale 2
    assert 0.03 < weak["delta"]["current_mass"] < strong["delta"]["current_mass"]
    assert strong["delta"]["current_mass"] > 0.1 and strong["delta"]["current_pred_fraction"] > 0.2
    assert strong["delta"]["oracle_label_prob"] < -0.15
    assert strong["unguided"] == gr["unguided"] == gr["guided"]
    assert all(v == 0 for v in gr["delta"].values())
