"""Noise schedules, respacing, the forward process, the posterior, samplers and EMA."""
import math

import pytest
import torch

from guide.diffusion import EMA, NoiseSchedule, epsilon_loss, respaced_timesteps
from guide.samplers import ddim_sample, ddpm_sample


def test_ddim50_respacing_is_the_ddim_stride():
    assert respaced_timesteps(1000, "ddim50") == list(range(0, 1000, 20))


def test_section_respacing_250_spans_first_to_last_step():
    steps = respaced_timesteps(1000, "250")
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    assert steps[1] == round(999 / 249)  # evenly spaced with the ends included
    assert respaced_timesteps(1000, "") == list(range(1000))


def test_two_sections_split_steps_per_section():
    steps = respaced_timesteps(100, "5,10")
    assert len(steps) == 15 and steps[:5] == [0, 12, 24, 37, 49] and steps[5] == 50 and steps[-1] == 99


def test_linear_and_cosine_schedules():
    lin = NoiseSchedule.make("linear", 1000)  # the reference's: β₁ = 0.001, not DDPM's 1e-4
    assert lin.betas[0].item() == pytest.approx(1e-3) and lin.betas[-1].item() == pytest.approx(0.02)
    few = NoiseSchedule.make("linear", 5)  # below 10 steps: 100/T·0.01 … 100/T·0.02
    assert few.betas[0].item() == pytest.approx(0.2) and few.betas[-1].item() == pytest.approx(0.4)
    for T in (10, 19):  # the last β would pass 1
        with pytest.raises(ValueError, match=f"num_timesteps={T}"):
            NoiseSchedule.make("linear", T)
    assert NoiseSchedule.make("linear", 20).betas[-1].item() == pytest.approx(1.0)
    cos = NoiseSchedule.make("cosine", 1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert cos.alphas_cumprod[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-6)
    with pytest.raises(ValueError, match="quadratic"):
        NoiseSchedule.make("quadratic")


def test_respaced_schedule_keeps_alpha_bar_of_kept_steps():
    base = NoiseSchedule.make("linear", 1000)
    short = base.respace("ddim50")
    assert short.num_steps == 50
    assert torch.allclose(short.alphas_cumprod, base.alphas_cumprod[::20])
    assert short.timestep_map.tolist() == list(range(0, 1000, 20))


def test_forward_process_matches_closed_form():
    s = NoiseSchedule.make("linear", 1000)
    x0, noise = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    ab = torch.cumprod(1 - torch.linspace(1e-3, 0.02, 1000, dtype=torch.float64), 0)[t].view(3, 1, 1, 1)
    assert torch.allclose(s.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # x̂₀ from the true noise recovers x₀; ε from x₀ recovers the noise
    xt = s.q_sample(x0, t, noise)
    assert torch.allclose(s.predict_x0(xt, t, noise), x0)
    assert torch.allclose(s.eps_from_x0(xt, t, x0), noise)


def test_posterior_matches_closed_form():
    s = NoiseSchedule.make("linear", 1000)
    t = 300
    beta, ab, ab_prev = s.betas[t], s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    x0, xt = torch.randn(1, 1, 2, 2, dtype=torch.float64), torch.randn(1, 1, 2, 2, dtype=torch.float64)
    mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * xt
    assert torch.allclose(s.q_posterior_mean(x0, xt, torch.tensor([t])), mean)
    assert s.posterior_variance[t].item() == pytest.approx(((1 - ab_prev) / (1 - ab) * beta).item())
    assert s.posterior_variance[0].item() == 0.0
    assert s.model_variance("fixed_large")[t] == beta and s.model_variance("fixed_large")[0] == s.posterior_variance[1]


def test_ddim_eta0_is_deterministic_from_fixed_noise(tiny_unet):
    s = NoiseSchedule.make("linear", 100).respace("ddim10")
    noise, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    a = ddim_sample(tiny_unet, s, noise, y, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(tiny_unet, s, noise, y, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = ddim_sample(tiny_unet, s, noise, y, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)


def test_ddpm_is_reproducible_with_the_same_generator(tiny_unet):
    s = NoiseSchedule.make("linear", 100).respace("10")
    noise, y = torch.randn(2, 1, 16, 16), torch.tensor([0, 1])
    a = ddpm_sample(tiny_unet, s, noise, y, generator=torch.Generator().manual_seed(5))
    b = ddpm_sample(tiny_unet, s, noise, y, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == noise.shape


def test_training_is_reproducible_and_reduces_loss(tiny_unet):
    from guide.continual import train_diffusion
    from guide.data import load_dataset

    ds = load_dataset("synthetic")
    s = NoiseSchedule.make("linear", 100)
    states = []
    for _ in range(2):
        model = type(tiny_unet)(image_size=16, in_channels=1, model_channels=16, out_channels=1, num_res_blocks=1,
                                attention_resolutions=(), channel_mult=(1, 2), num_classes=4, dropout=0.0)
        torch.manual_seed(0)
        model.load_state_dict(tiny_unet.state_dict())
        ema = EMA(model, 0.9)
        losses = train_diffusion(model, ema, s, ds.train_x, ds.train_y, steps=40, batch_size=32, lr=2e-3,
                                 generator=torch.Generator().manual_seed(0))
        states.append(ema.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert sum(losses[-10:]) < sum(losses[:10])


def test_ema_moves_toward_weights():
    lin = torch.nn.Linear(2, 1)
    ema = EMA(lin, decay=0.5)
    before = ema.state_dict()["weight"].clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.state_dict()["weight"], before + 0.5)


def test_epsilon_loss_is_zero_for_a_perfect_noise_predictor():
    s = NoiseSchedule.make("linear", 50)
    x0 = torch.randn(4, 1, 8, 8)

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.randint(0, 50, (4,), generator=g2)
    true_noise = torch.randn(x0.shape, generator=g2)
    assert epsilon_loss(lambda x, t, y: true_noise, s, x0, None, g1).item() == 0.0


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_skipping_a_batch_leaves_the_generator_where_sampling_it_does(sampler, eta):
    """A rank that leaves a batch to another rank must start its next batch from the same generator
    state as one process that sampled it (guide.continual.generate over several ranks)."""
    from guide.samplers import sample, skip

    schedule = NoiseSchedule.make("linear", 50).respace("ddim5")
    zeros = lambda x, t, y: torch.zeros_like(x)  # noqa: E731  (a model that predicts no noise)
    sampled, skipped = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    sample(zeros, schedule, torch.randn(2, 1, 4, 4), None, sampler=sampler, eta=eta, generator=sampled)
    skip(schedule, (2, 1, 4, 4), skipped, sampler=sampler, eta=eta)
    assert torch.equal(sampled.get_state(), skipped.get_state())
    assert torch.equal(torch.randn(3, generator=sampled), torch.randn(3, generator=skipped))
