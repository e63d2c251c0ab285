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
# starts, gets its share (two torch processes with a thread per core each thrash). The same count in
# this process and in its subprocesses, so a stage run here writes the bytes `dvc repro` wrote there.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = os.environ.get("GUIDE_TEST_THREADS") or str(max(1, (os.cpu_count() or 1) // _WORKERS))
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _THREADS
torch.set_num_threads(int(_THREADS))


def pytest_collection_modifyitems(config, items):
    """An order that keeps two pytest-xdist workers busy (`--dist worksteal` gives the first worker the
    first half of the list and the second the rest): the tests on the shared smoke repository first
    (their first builds it), the quick tests, then the other end-to-end tests (which build their own),
    so neither worker waits for the other or ends on a long test alone."""
    def rank(item) -> int:
        if item.path.name == "test_pipeline.py":
            return 0
        return 2 if item.get_closest_marker("slow") else 1
    items.sort(key=rank)


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
