"""Fast CPU checks for guide.models: reference parameter counts, shapes, conditioning, gradients."""

from __future__ import annotations

import pytest
import torch

from guide.models import (
    CIFAR10_REFERENCE_UNET,
    PreActResNet18,
    SmallCNN,
    UNet,
    build_classifier,
    resnet18,
)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def tiny_unet(image_size: int, channels: int, class_cond: str, **kw) -> UNet:
    """Small UNet: 28x28 uses (1,2,2), 32x32 uses (1,2,2,2), like the reference defaults."""
    mult = (1, 2, 2) if image_size == 28 else (1, 2, 2, 2)
    res = (14,) if image_size == 28 else (16, 8)
    cfg = dict(
        image_size=image_size,
        in_channels=channels,
        model_channels=32,
        out_channels=channels,
        num_res_blocks=1,
        attention_resolutions=res,
        channel_mult=mult,
        num_classes=None if class_cond == "none" else 10,
        class_cond=class_cond,
    )
    cfg.update(kw)
    torch.manual_seed(0)
    return UNet(**cfg).eval()


def randomise_zero_layers(model: torch.nn.Module) -> None:
    """Output convs are zero-initialised; perturb all weights so outputs depend on inputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


# --------------------------------------------------------------------------- counts


def test_reference_unet_parameter_count():
    assert n_params(UNet(**CIFAR10_REFERENCE_UNET)) == 52_537_849


def test_reference_resnet18_parameter_count():
    assert n_params(resnet18(10)) == 11_173_062
    assert n_params(PreActResNet18(10, in_channels=3)) == 11_173_062
    assert n_params(build_classifier("resnet18", 10, 3, 32)) == 11_173_062


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("class_cond", ["concat_time_1hot", "add_time_learned", "none"])
@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3)])
def test_unet_output_shape(class_cond, image_size, channels):
    model = tiny_unet(image_size, channels, class_cond)
    x = torch.randn(2, channels, image_size, image_size)
    t = torch.tensor([0, 999])
    y = None if class_cond == "none" else torch.tensor([1, 7])
    with torch.no_grad():
        out = model(x, t, y)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_zero_initialised_output():
    model = tiny_unet(28, 1, "concat_time_1hot")
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([3, 4]), torch.tensor([0, 1]))
    assert torch.count_nonzero(out) == 0


def test_unet_options_learn_sigma_updown_new_attention():
    model = tiny_unet(
        32, 3, "concat_time_1hot", out_channels=6, resblock_updown=True,
        use_new_attention_order=True, num_head_channels=16, use_scale_shift_norm=False,
    )
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), torch.tensor([5.5, 10.0]), torch.tensor([2, 3]))
    assert out.shape == (2, 6, 32, 32)


def test_unet_tiny_width_groupnorm():
    model = tiny_unet(28, 1, "none", model_channels=16)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28), torch.tensor([1])).shape == (1, 1, 28, 28)


def test_concat_time_1hot_structure_and_label_use():
    model = tiny_unet(28, 1, "concat_time_1hot")
    # the time MLP's last linear is shrunk by num_classes; one-hot fills the rest
    assert model.time_embed[-1].out_features == 4 * 32 - 10
    assert model.time_embed[-1].in_features == 4 * 32
    randomise_zero_layers(model)
    x = torch.randn(2, 1, 28, 28)
    t = torch.tensor([100, 100])
    with torch.no_grad():
        a = model(x, t, torch.tensor([0, 0]))
        b = model(x, t, torch.tensor([5, 5]))
    assert not torch.allclose(a, b)


def test_add_time_learned_uses_label():
    model = tiny_unet(28, 1, "add_time_learned")
    assert model.label_emb.weight.shape == (10, 4 * 32)
    randomise_zero_layers(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 10])
    with torch.no_grad():
        assert not torch.allclose(model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([3, 3])))


def test_none_ignores_labels():
    model = tiny_unet(28, 1, "none")
    randomise_zero_layers(model)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
    with torch.no_grad():
        ref = model(x, t)
        assert torch.equal(ref, model(x, t, torch.tensor([0, 1])))
        assert torch.equal(ref, model(x, t, torch.tensor([9, 4])))


def test_conditional_unet_requires_labels():
    model = tiny_unet(28, 1, "concat_time_1hot")
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 28, 28), torch.tensor([1]))


def test_unet_rejects_bad_config():
    with pytest.raises(ValueError, match="class_cond"):
        tiny_unet(28, 1, "bogus")
    with pytest.raises(ValueError):
        tiny_unet(28, 1, "concat_time_1hot", channel_mult=(1, 2, 2, 2))  # 28 not divisible by 8


def test_unet_input_gradient():
    model = tiny_unet(28, 1, "concat_time_1hot")
    randomise_zero_layers(model)
    x = torch.randn(2, 1, 28, 28, requires_grad=True)
    out = model(x, torch.tensor([50.0, 700.0]), torch.tensor([1, 2]))
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.shape == x.shape
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_block_is_softmax_attention_over_positions(new_order):
    """The fused-kernel layout computes what the reference's QKV attention computes: per head,
    softmax(qᵀk / √ch) weighting v, with the qkv channels split heads-first (legacy) or q|k|v-first."""
    from guide.models.unet import AttentionBlock

    torch.manual_seed(0)
    block = AttentionBlock(64, num_heads=4, use_new_attention_order=new_order).eval()
    randomise_zero_layers(block)
    x = torch.randn(3, 64, 4, 5)
    b, c, heads, ch, T = 3, 64, 4, 16, 20
    with torch.no_grad():
        flat = x.reshape(b, c, T)
        qkv = block.qkv(block.norm(flat))
        if new_order:
            q, k, v = (part.reshape(b, heads, ch, T) for part in qkv.chunk(3, dim=1))
        else:
            q, k, v = qkv.reshape(b, heads, 3 * ch, T).split(ch, dim=2)
        w = torch.softmax(torch.einsum("bhct,bhcs->bhts", q, k) / ch**0.5, dim=-1)
        att = torch.einsum("bhts,bhcs->bhct", w, v).reshape(b, c, T)
        expected = (flat + block.proj_out(att)).reshape(x.shape)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_unet_output_has_the_usual_layout_and_matches_a_contiguous_rerun():
    model = tiny_unet(32, 3, "concat_time_1hot")
    randomise_zero_layers(model)
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([5, 900]), torch.tensor([1, 7])
    with torch.no_grad():
        out = model(x, t, y)
        again = model(x.contiguous(memory_format=torch.channels_last), t, y)
    assert out.is_contiguous()  # channels-last inside, handed back in the usual layout
    assert torch.equal(out, again)


def test_bf16_precision_autocasts_the_forward_and_returns_fp32():
    fp32 = tiny_unet(32, 3, "concat_time_1hot")
    randomise_zero_layers(fp32)
    bf16 = tiny_unet(32, 3, "concat_time_1hot", precision="bf16")
    bf16.load_state_dict(fp32.state_dict())
    x, t, y = torch.randn(2, 3, 32, 32), torch.tensor([5, 900]), torch.tensor([1, 7])
    with torch.no_grad():
        a, b = fp32(x, t, y), bf16(x, t, y)
    assert b.dtype == torch.float32 and all(p.dtype == torch.float32 for p in bf16.parameters())
    assert not torch.equal(a, b)  # bf16 arithmetic really ran
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # and is the same function, to bf16's precision
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(bf16(xg, t, y).square().sum(), xg)  # guidance differentiates it
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="precision 'fp16'"):
        tiny_unet(32, 3, "concat_time_1hot", precision="fp16")


# --------------------------------------------------------------------------- classifiers


@pytest.mark.parametrize(
    "arch,channels,size",
    [("resnet18", 3, 32), ("resnet18", 1, 28), ("resnet18", 3, 64), ("small_cnn", 1, 28), ("small_cnn", 1, 16)],
)
def test_classifier_shapes(arch, channels, size):
    model = build_classifier(arch, 7, channels, size).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, channels, size, size) * 2 - 1)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ["resnet18", "small_cnn"])
def test_classifier_input_gradient(arch):
    model = build_classifier(arch, 5, 1, 28).eval()
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    logp = torch.log_softmax(model(x), dim=-1)[torch.arange(3), torch.tensor([0, 1, 4])]
    (grad,) = torch.autograd.grad(logp.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_small_cnn_trains_one_step():
    torch.manual_seed(0)
    model = SmallCNN(4, in_channels=1, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 4, (8,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_build_classifier_rejects_unknown_arch():
    with pytest.raises(ValueError, match="vgg11"):
        build_classifier("vgg11", 10, 3, 32)
