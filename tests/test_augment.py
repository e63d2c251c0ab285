"""guide.augment: each op's behaviour, which tests/test_reference_parity.py names by kornia's semantics
(its op parameters and output statistics are checked there against the reference's kornia run)."""
from __future__ import annotations

import pytest
import torch

from guide import augment as A


def _seeded(fn, *args, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return fn(*args, **kwargs)


@pytest.mark.parametrize("kind,channels,size", [("reference", 3, 32), ("reference", 1, 28), ("digits", 1, 28),
                                                ("digits", 3, 16)])
def test_contract_shape_dtype_range_and_seed(kind, channels, size):
    x = torch.rand(64, channels, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    f = A.make_augmentation(kind, channels, size)
    y = _seeded(f, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= -1 and y.max() <= 1
    assert torch.equal(y, _seeded(f, x))  # repeatable under torch.manual_seed
    assert not torch.equal(y, _seeded(f, x, seed=1))


def test_kinds():
    assert A.make_augmentation("none", 3, 32) is None
    with pytest.raises(ValueError):
        A.make_augmentation("flip", 3, 32)
    ref = A.augmentation_ops("reference", 3, 32)
    assert [type(op) for op in ref] == [A.Crop, A.Rotation, A.HFlip, A.ColorJiggle, A.Erasing]
    assert ref[3] == A.ColorJiggle(0.1, 0.1, 0.1, 0.1, p=1.0)  # the reference's ColorJiggle(0.1, 0.1, 0.1, 0.1)
    digits = A.augmentation_ops("digits", 1, 28)
    assert [type(op) for op in digits] == [A.Crop, A.Rotation, A.ColorJiggle, A.Erasing]  # no flip
    assert digits[2] == A.ColorJiggle(0.1, 0.1, 0.0, 0.0)  # brightness and contrast only
    assert ref[0] == A.Crop(32, padding=4, fill=0.0) and digits[0] == A.Crop(28, padding=4, fill=0.0)
    assert ref[1] == digits[1] == A.Rotation(30.0, p=0.5, interpolation="bilinear")
    assert ref[4] == digits[3] == A.Erasing(scale=(0.1, 0.5), ratio=(0.3, 3.3), value=0.0, p=0.5)


def test_crop_pads_with_zeros_at_a_uniform_offset():
    torch.manual_seed(0)
    y = A.Crop(8, padding=4)(torch.ones(3000, 1, 8, 8))
    # the offset shows as zero rows at the top (dy < 0) or bottom (dy > 0), zero columns likewise
    rows, cols = (y[:, 0] == 0).all(2), (y[:, 0] == 0).all(1)
    dy = rows[:, 4:].sum(1) - rows[:, :4].sum(1)
    dx = cols[:, 4:].sum(1) - cols[:, :4].sum(1)
    assert ((y == 0) | (y == 1)).all() and dx.abs().max() == 4 and dy.abs().max() == 4
    counts = torch.bincount(((dy + 4) * 9 + dx + 4), minlength=81)
    assert counts.min() > 0 and counts.max() < 3 * 3000 / 81  # all 9×9 offsets, roughly evenly


def test_rotation_half_the_batch_bilinear_about_the_centre():
    torch.manual_seed(0)
    x = torch.ones(4000, 1, 9, 9)
    y = A.Rotation(30.0)(x)
    turned = (y != 1).flatten(1).any(1)
    assert 0.46 < turned.float().mean() < 0.54  # p = 0.5 per image
    assert torch.equal(y[~turned], x[~turned])
    corner = y[turned][:, 0, 0, 0]
    assert ((corner > 0) & (corner < 1)).any() and (corner == 0).any()  # bilinear, 0 outside
    # about the pixel centre: the centre pixel stays, and the largest angle leaves the corner's
    # 30° neighbour (on a 9×9 grid, the pixel 4·(1, tan 30°) from the centre) partly covered only
    assert torch.allclose(y[:, 0, 4, 4], torch.ones(4000))
    dot = torch.zeros(1, 1, 9, 9)
    dot[0, 0, 4, 8] = 1  # right-hand midpoint: a turn by a moves it along the circle of radius 4
    torch.manual_seed(3)
    spun = A.Rotation(30.0, p=1.0)(dot.expand(2000, -1, -1, -1))
    assert spun[:, 0, :, :2].sum() == 0 and spun[:, 0, 0].sum() == 0 and spun[:, 0, -1].sum() == 0  # |a| ≤ 30°
    above, below = spun[:, 0, :4].sum((1, 2)), spun[:, 0, 5:].sum((1, 2))
    assert 0.4 < (above > below).float().mean() < 0.6  # both directions


def test_hflip_mirrors_half_the_batch():
    torch.manual_seed(0)
    x = torch.rand(4000, 2, 4, 5)
    y = A.HFlip()(x)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert ((y == x).flatten(1).all(1) ^ flipped).all()
    assert 0.46 < flipped.float().mean() < 0.54


def test_diffusion_flip_is_the_reference_flip_drawn_from_the_training_generator(monkeypatch):
    assert A.DIFFUSION_HFLIP == A.HFlip(p=0.5)
    x = torch.rand(64, 1, 4, 4)
    y = A.DIFFUSION_HFLIP(x, torch.Generator().manual_seed(7))
    flip = torch.rand(64, generator=torch.Generator().manual_seed(7)) < 0.5  # the draw train_diffusion made before
    assert torch.equal(y, torch.where(flip[:, None, None, None], x.flip(-1), x))

    from guide import continual
    from guide.diffusion import EMA, NoiseSchedule

    seen = []

    def spy(xb, generator):
        seen.append(generator)
        return A.DIFFUSION_HFLIP(xb, generator)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, x, t, y):
            return self.conv(x)

    monkeypatch.setattr(continual, "DIFFUSION_HFLIP", spy)
    net, g = Net(), torch.Generator().manual_seed(0)
    args = (NoiseSchedule.make("linear", 50), x, torch.zeros(64, dtype=torch.long))
    kwargs = dict(steps=3, batch_size=4, lr=1e-3, generator=g)
    continual.train_diffusion(net, EMA(net, 0.9), *args, **kwargs)
    assert seen == [g] * 3
    continual.train_diffusion(net, EMA(net, 0.9), *args, hflip=False, **kwargs)
    assert len(seen) == 3


def test_color_jiggle_brightness_adds_contrast_multiplies_and_both_clamp():
    x = torch.tensor([0.2, 0.8, 0.97]).repeat(2000, 3, 4, 1)  # grey images, three pixel values
    torch.manual_seed(0)
    b = A.ColorJiggle(0.1, 0.0, 0.0, 0.0)(x)
    shift = b[..., 0] - 0.2
    assert torch.allclose(b[..., 1] - 0.8, shift, atol=1e-6)  # adds b − 1 (a multiplier would scale it)
    assert shift.min() < -0.09 and shift.max() > 0.09 and shift.abs().max() <= 0.1 + 1e-6
    assert b.max() == 1 and torch.allclose(b[..., 2], (0.97 + shift).clamp(max=1))
    torch.manual_seed(0)
    c = A.ColorJiggle(0.0, 0.1, 0.0, 0.0)(x)
    factor = c[..., 0] / 0.2
    assert torch.allclose(c[..., 1], 0.8 * factor, atol=1e-6)  # multiplies the pixels (no blend with the mean)
    assert factor.min() < 0.91 and factor.max() > 1.09
    assert c.max() == 1 and torch.allclose(c[..., 2], (0.97 * factor).clamp(max=1), atol=1e-6)


def test_color_jiggle_saturation_and_hue_act_in_hsv():
    grey = torch.full((200, 3, 2, 2), 0.4)
    torch.manual_seed(0)
    assert torch.allclose(A.ColorJiggle(0.0, 0.0, 0.1, 0.1)(grey), grey, atol=1e-6)  # no saturation to scale or turn
    colour = torch.tensor([0.8, 0.4, 0.2])[None, :, None, None].repeat(4000, 1, 1, 1)  # h = 20°, s = 0.75, v = 0.8
    torch.manual_seed(0)
    s = A.ColorJiggle(0.0, 0.0, 0.1, 0.0)(colour)
    sat = (s.amax(1) - s.amin(1)) / s.amax(1)
    assert torch.allclose(s.amax(1), torch.tensor(0.8)) and sat.min() < 0.68 and sat.max() > 0.82
    assert torch.allclose(s[:, 1] - s[:, 2], (s[:, 0] - s[:, 2]) / 3, atol=1e-5)  # hue kept
    torch.manual_seed(0)
    h = A.ColorJiggle(0.0, 0.0, 0.0, 0.1)(colour)
    hsv = A._rgb_to_hsv(h)
    assert torch.allclose(hsv[1], torch.tensor(0.75), atol=1e-5) and torch.allclose(hsv[2], torch.tensor(0.8))
    hue = torch.rad2deg(hsv[0])
    hue = torch.where(hue > 180, hue - 360, hue)
    assert hue.min() < 20 - 35 and hue.max() > 20 + 35 and (hue - 20).abs().max() <= 36 + 1e-3  # ±0.1 of the circle


def test_hsv_round_trip():
    x = torch.rand(50, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(A._hsv_to_rgb(*A._rgb_to_hsv(x)), x, atol=1e-5)


def test_erasing_area_ratio_and_probability():
    torch.manual_seed(0)
    y = A.Erasing()(torch.ones(4000, 3, 32, 32))
    hole = y[:, 0] == 0
    assert torch.equal(y == 0, hole[:, None].expand_as(y))  # all channels, value 0
    erased = hole.flatten(1).any(1)
    assert 0.46 < erased.float().mean() < 0.54  # p = 0.5
    hole = hole[erased]
    rows, cols = hole.any(2).sum(1), hole.any(1).sum(1)
    assert torch.equal(hole.sum((1, 2)), rows * cols)  # one rectangle
    area = (rows * cols).float() / 1024
    # scale U[0.1, 0.5] of the area (sides rounded, the height clamped to the image)
    assert area.min() >= 0.085 and area.max() <= 0.53 and area.min() < 0.12 and area.max() > 0.45
    ratio = rows.float() / cols
    assert ratio.min() < 0.35 and ratio.max() > 2.5  # aspect ratio from [0.3, 3.3]
    assert 0.4 < (ratio < 1).float().mean() < 0.6  # below 1 half the time
