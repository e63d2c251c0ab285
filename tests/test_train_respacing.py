"""diffusion.train_respacing: the ε-network trained on a respaced chain, as the reference's ImageNet
command does (--timestep_respacing=ddim250 given to training: its SpacedDiffusion draws t over the
kept steps, with β respaced, and feeds the network the original timestep)."""
from __future__ import annotations

import pytest
import torch

from guide.continual import train_diffusion
from guide.diffusion import EMA, NoiseSchedule, epsilon_loss, respaced_timesteps
from params import ParamsError, preset
from params.io import params_from_dict


class RecordingNet(torch.nn.Module):
    """Predicts w·x_t and records the timesteps it is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[int] = []

    def forward(self, x, t, y=None):
        self.seen += t.tolist()
        return self.w * x


def test_training_on_a_respaced_chain_gives_the_network_only_kept_timesteps():
    schedule = NoiseSchedule.make("linear", 1000).respace("ddim250")
    kept = respaced_timesteps(1000, "ddim250")
    assert kept == list(range(0, 1000, 4)) and schedule.timestep_map.tolist() == kept
    net = RecordingNet()
    x = torch.randn(64, 1, 4, 4)
    y = torch.zeros(64, dtype=torch.long)
    train_diffusion(net, EMA(net, 0.9), schedule, x, y, steps=40, batch_size=64, lr=1e-3,
                    hflip=False, generator=torch.Generator().manual_seed(0))
    seen = set(net.seen)
    assert len(net.seen) == 40 * 64
    assert seen <= set(kept), sorted(seen - set(kept))[:5]
    assert len(seen) > 200  # uniform over the 250 kept steps: 2,560 draws leave few unseen
    assert min(seen) == 0 and max(seen) == 996


def test_a_respaced_training_step_noises_at_the_original_steps_level():
    full = NoiseSchedule.make("linear", 1000)
    spaced = full.respace("ddim250")
    # ᾱ of respaced step i is the original ᾱ at timestep_map[i], so x_t is noised as at that step
    assert torch.allclose(spaced.alphas_cumprod, full.alphas_cumprod[spaced.timestep_map], rtol=1e-12, atol=0)
    x0, noise = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    i = torch.tensor([0, 100, 249])
    assert torch.allclose(spaced.q_sample(x0, i, noise), full.q_sample(x0, spaced.timestep_map[i], noise))
    net = RecordingNet()
    epsilon_loss(net, spaced, torch.randn(512, 1, 2, 2), None, torch.Generator().manual_seed(1))
    assert set(net.seen) <= set(spaced.timestep_map.tolist())


def test_the_diffusion_stage_trains_on_the_chosen_chain(tmp_path, monkeypatch):
    import stages.diffusion as stage
    from stages.common import Context

    got = {}

    def fake_train(model, ema, schedule, x, y, **kw):
        got["map"] = schedule.timestep_map.tolist()
        return [0.0]

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(stage, "train_diffusion", fake_train)
    for spec, want in (("", list(range(100))), ("ddim25", list(range(0, 100, 4)))):
        p = preset("smoke", diffusion={"train_respacing": spec})
        stage.run(Context("diffusion", p, 0, 0))
        assert got["map"] == want, spec
    assert "diffusion.train_respacing" in stage.reads(preset("smoke"), 0)


def test_train_respacing_is_validated_with_its_field_named():
    raw = preset("smoke").model_dump(mode="json")
    raw["diffusion"]["train_respacing"] = "ddim60"  # no integer stride gives 60 of 100 steps
    with pytest.raises(ParamsError, match=r"diffusion\.train_respacing: 'ddim60'"):
        params_from_dict(raw, "test")
    raw["diffusion"]["train_respacing"] = 50  # an integer from `-S` becomes the section count "50"
    assert params_from_dict(raw, "test").diffusion.train_respacing == "50"
