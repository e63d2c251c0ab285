"""Class-conditional diffusion UNet used by GUIDE (eps-prediction backbone).

The architecture follows the UNet of improved-diffusion / guided-diffusion as
configured by the GUIDE reference code: residual blocks conditioned on a time
embedding (optionally FiLM-style scale/shift), self-attention at selected
resolutions, and a label signal that is either a one-hot vector concatenated
to the time embedding, a learned embedding added to it, or absent.

Shapes: ``forward(x [N,C,H,W], t [N], y [N] | None) -> [N, out_channels, H, W]``.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

CLASS_COND_KINDS = ("concat_time_1hot", "add_time_learned", "none")
PRECISIONS = ("fp32", "bf16")  # "bf16": the forward pass under bf16 autocast (weights stay fp32)

# Constructor kwargs of the GUIDE CIFAR-10 diffusion model (README run commands
# + guide/script_args.py defaults + create_model's channel_mult for 32x32).
# UNet(**CIFAR10_REFERENCE_UNET) has exactly 52,537,849 parameters.
CIFAR10_REFERENCE_UNET = dict(
    image_size=32,
    in_channels=3,
    model_channels=128,  # num_channels default
    out_channels=3,  # learn_sigma=False -> predict eps only
    num_res_blocks=3,  # --num_res_blocks=3
    attention_resolutions=(16, 8),  # "16,8" -> downsample rates (2, 4)
    dropout=0.1,
    channel_mult=(1, 2, 2, 2),  # reference default for image_size 32
    num_classes=10,  # model_num_classes = number of dataset classes
    class_cond="concat_time_1hot",  # --embedding_kind=concat_time_1hot
    num_heads=4,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_new_attention_order=False,
    precision="fp32",  # the reference trains in fp32 (use_fp16=False)
)


# ----------------------------------------------------------------------------
# small building blocks
# ----------------------------------------------------------------------------


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that always normalises in float32 and casts back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def norm_layer(channels: int) -> GroupNorm32:
    """GroupNorm with 32 groups when possible; fewer for narrow layers."""
    return GroupNorm32(math.gcd(32, channels), channels)


def zeroed(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` (used on residual output convs)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) timesteps [N]: cos half then sin half."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:  # odd dims get a zero column
        emb = F.pad(emb, (0, 1))
    return emb


class EmbedSequential(nn.Sequential):
    """Sequential container that hands the conditioning embedding to ResBlocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve spatial size with a stride-2 3x3 conv (or 2x2 average pooling)."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double spatial size (nearest neighbour), optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding, optionally resampling.

    in: norm -> SiLU -> [resample] -> conv3x3
    emb: SiLU -> linear -> (scale, shift) or bias
    out: norm (* (1 + scale) + shift) -> SiLU -> dropout -> zero-init conv3x3
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm

        self.in_norm = norm_layer(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        if up:
            self.resample_h, self.resample_x = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.resample_h, self.resample_x = Downsample(channels, False), Downsample(channels, False)
        else:
            self.resample_h = self.resample_x = None

        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))

        self.out_norm = norm_layer(out_channels)
        self.out_drop = nn.Dropout(dropout)
        self.out_conv = zeroed(nn.Conv2d(out_channels, out_channels, 3, padding=1))

        if out_channels == channels:
            self.skip = nn.Identity()
        else:  # 1x1 projection when the width changes
            self.skip = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        if self.resample_h is not None:
            h, x = self.resample_h(h), self.resample_x(x)
        h = self.in_conv(h)

        e = self.emb_proj(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.out_drop(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, residual, zero-init output."""

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {self.num_heads}")
        # legacy order: qkv laid out as [heads, (q|k|v), ch]; new order: [(q|k|v), heads, ch]
        self.new_order = use_new_attention_order
        self.norm = norm_layer(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zeroed(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        length = flat.shape[-1]
        qkv = self.qkv(self.norm(flat))  # [b, 3c, T]
        heads, ch = self.num_heads, c // self.num_heads
        if self.new_order:
            qkv = qkv.reshape(b, 3, heads, ch, length).permute(1, 0, 2, 4, 3)
        else:
            qkv = qkv.reshape(b, heads, 3, ch, length).permute(2, 0, 1, 4, 3)
        # contiguous [B, H, T, ch] each: on the CPU, scaled_dot_product_attention takes its fused
        # (flash) kernel only for contiguous inputs, ~3× faster than the math fallback at T=256
        q, k, v = qkv.float().contiguous().unbind(0)
        # in fp32 under bf16 autocast too: the CPU's bf16 attention kernels, its backward above all,
        # are slower than the fp32 ones at these sizes
        with torch.autocast(x.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q, k, v).to(qkv.dtype)  # scale 1/sqrt(ch)
        out = out.transpose(-1, -2).reshape(b, c, length)
        return (flat + self.proj_out(out)).reshape(b, c, *spatial)


# ----------------------------------------------------------------------------
# the UNet
# ----------------------------------------------------------------------------


class UNet(nn.Module):
    """Time- and (optionally) class-conditional UNet for noise prediction.

    ``attention_resolutions`` are feature-map resolutions (e.g. (16, 8) for
    32x32 inputs); they are converted to downsample rates ``image_size // res``.
    ``precision``: ``fp32``, or ``bf16`` to run the forward pass under bf16 autocast
    (weights, optimiser state and output stay fp32).
    ``class_cond``:
      * ``concat_time_1hot`` - the time MLP's last linear outputs
        ``4*model_channels - num_classes`` features; the one-hot label is
        concatenated after it to form the full embedding (GUIDE default).
      * ``add_time_learned`` - ``nn.Embedding(num_classes, 4*model_channels)``
        added to the time embedding.
      * ``none`` - unconditional; ``y`` is ignored.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_classes: Optional[int] = None,
        class_cond: str = "concat_time_1hot",
        num_heads: int = 4,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        precision: str = "fp32",
    ):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        self.precision = precision
        if class_cond not in CLASS_COND_KINDS:
            raise ValueError(f"unknown class_cond {class_cond!r}; expected one of {CLASS_COND_KINDS}")
        if class_cond != "none" and not num_classes:
            raise ValueError(f"class_cond={class_cond!r} needs num_classes")
        levels = len(channel_mult)
        if image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {image_size} is not divisible by 2**{levels - 1} (channel_mult={tuple(channel_mult)})")
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads

        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        self.class_cond = class_cond
        # resolutions -> downsample rates, as the reference's create_model does
        self.attention_ds = tuple(sorted({image_size // int(r) for r in attention_resolutions}))

        # conditioning embedding: sinusoid(model_channels) -> MLP -> [+ label]
        emb_dim = 4 * model_channels
        time_out = emb_dim - num_classes if class_cond == "concat_time_1hot" else emb_dim
        if time_out <= 0:
            raise ValueError(f"num_classes {num_classes} must be < time embedding width {emb_dim}")
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, time_out),  # shrunk by num_classes for concat_time_1hot
        )
        self.label_emb = nn.Embedding(num_classes, emb_dim) if class_cond == "add_time_learned" else None

        def res(ch_in: int, ch_out: int, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, up=up, down=down)

        def attn(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, heads, num_head_channels, use_new_attention_order)

        # encoder
        ch = int(channel_mult[0] * model_channels)
        stem_ch = ch
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != levels - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        # bottleneck
        self.middle_block = EmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))

        # decoder: one more block per level than the encoder, consuming skips
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                skip_ch = skip_chans.pop()
                layers = [res(ch + skip_ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            norm_layer(ch),
            nn.SiLU(),
            zeroed(nn.Conv2d(stem_ch, out_channels, 3, padding=1)),
        )

    # ------------------------------------------------------------------
    def embed(self, t: torch.Tensor, y: Optional[torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
        """Conditioning vector [N, 4*model_channels] from timesteps and labels."""
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.class_cond == "none":
            return emb
        if y is None:
            raise ValueError(f"class_cond={self.class_cond!r} requires labels y")
        y = y.to(device=device).long()
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(y.shape)}")
        if self.class_cond == "add_time_learned":
            return emb + self.label_emb(y)
        return torch.cat([emb, F.one_hot(y, self.num_classes).to(emb.dtype)], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.precision == "fp32":
            return self._forward(x, t, y)
        # bf16: autocast (matmuls and convolutions in bf16, norms and softmax in fp32); the result,
        # and so everything the sampler and the loss compute from it, is fp32
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self._forward(x, t, y).float()

    def _forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> torch.Tensor:
        emb = self.embed(t, y, x.shape[0], x.device)
        skips = []
        # channels-last activations: oneDNN's convolutions run ~15% faster on the CPU in that layout
        # (same math; the result is handed back in the usual layout)
        h = x.contiguous(memory_format=torch.channels_last)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h).contiguous()
