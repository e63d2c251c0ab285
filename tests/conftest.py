import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# every subprocess a test starts (`dvc`, `python -m …`) is this interpreter's environment's, however
# pytest was started (`make test`, or `.venv/bin/python -m pytest` without the venv on PATH)
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
# the tests never report to a Prefect server of the user's: the session starts its own (prefect_server)
os.environ.pop("PREFECT_API_URL", None)
# pytest-xdist workers (`make test` runs `-n auto`) share the cores: each worker, and every stage it
# starts, gets its share — two torch processes with a thread per core each thrash
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(int(os.environ.get("GUIDE_TEST_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))))


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests first: with pytest-xdist, a long test started last would run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One Prefect server for the whole session, with its own PREFECT_HOME (and database): every flow
    a test runs, in this process or a subprocess, reports to it, so no test pays a server's start-up
    (24 s on the slower machines of our kind) or races Prefect's start-up limit. Yields its API URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    from pipeline.flow import prefect_api

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    with temporary_settings(updates={PREFECT_HOME: str(home)}, restore_defaults={PREFECT_API_URL}):
        with prefect_api() as (url, started):
            assert started, url
            yield url  # prefect_api put it in os.environ: subprocesses started from here on inherit it


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
