import os

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(int(os.environ.get("GUIDE_TEST_THREADS", "2")))  # 2 cores


@pytest.fixture
def tiny_unet():
    """A small class-conditional UNet with its zero-initialised output layers perturbed, so its
    ε-prediction depends on the input (a fresh reference UNet predicts exactly zero)."""
    from guide.models import UNet

    torch.manual_seed(0)
    model = UNet(image_size=16, in_channels=1, model_channels=16, out_channels=1, num_res_blocks=1,
                 attention_resolutions=(), channel_mult=(1, 2), num_classes=4, dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()
