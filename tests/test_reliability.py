"""What a user can rely on when something goes wrong: a corrupt input is refused with one line and
nothing written; artifacts are pure functions of their inputs."""
import struct
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from guide.io import CorruptArtifactError, content_digest, load_checkpoint, save_checkpoint
from params import dump_params, preset
from stages import paths

ROOT = Path(__file__).resolve().parents[1]


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor stored in a torch zip file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_checkpoint_round_trip_and_digest_facts(tmp_path):
    ckpt = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}},
            "task": 1}
    save_checkpoint(tmp_path / "c.pt", ckpt)
    back = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(back["model"]["w"], ckpt["model"]["w"]) and back["task"] == 1 and "sha256" not in back
    assert content_digest({"a": torch.zeros(2)}) != content_digest({"a": torch.zeros(2, dtype=torch.float64)})
    assert content_digest({"a": torch.zeros(2)}) != content_digest({"a": torch.zeros(1, 2)})
    assert content_digest({"a": 1, "b": 2}) == content_digest({"b": 2, "a": 1})


def test_a_flipped_byte_in_a_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.randn(64, 64)}})
    flip_a_tensor_byte(tmp_path / "c.pt")
    with pytest.raises(CorruptArtifactError, match=r"c\.pt: content hash \w{16} differs from the \w{16} written"):
        load_checkpoint(tmp_path / "c.pt")
    (tmp_path / "d.pt").write_bytes((tmp_path / "c.pt").read_bytes()[:-100])  # truncated
    with pytest.raises(CorruptArtifactError, match=r"d\.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "d.pt")
    torch.save({"model": {}}, tmp_path / "e.pt")  # no hash: not ours
    with pytest.raises(CorruptArtifactError, match="no content hash"):
        load_checkpoint(tmp_path / "e.pt")


def test_a_stage_given_a_corrupt_checkpoint_exits_2_in_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text(dump_params(preset("smoke")))
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"]}  # the share of the cores conftest gives
    r = subprocess.run([sys.executable, "-m", "stages.diffusion", "--task", "0"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = tmp_path / paths.diffusion(0)
    flip_a_tensor_byte(ckpt)
    r = subprocess.run([sys.executable, "-m", "stages.rehearsal", "--task", "1"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1 and paths.diffusion(0) in lines[0] and "differs from the" in lines[0], r.stderr
    assert not (tmp_path / paths.rehearsal(1)).exists()


def test_a_killed_stage_is_named_by_its_signal():
    from pipeline.flow import describe_exit

    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(-15) == "killed by SIGTERM"
    assert describe_exit(137).startswith("killed (exit 137") and describe_exit(2) == "exit 2"


def test_side_by_side_stages_split_the_cores(monkeypatch):
    from pipeline.flow import thread_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert thread_env(2, cores=2) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert thread_env(1, cores=16)["OMP_NUM_THREADS"] == "16" and thread_env(3, cores=16)["OMP_NUM_THREADS"] == "5"
    assert thread_env(4, cores=2)["OMP_NUM_THREADS"] == "1"
    # without --workers: one stage at a time below 4 cores (measured faster on 2), else 2
    from pipeline.flow import default_workers

    assert default_workers(2) == 1 and default_workers(3) == 1 and default_workers(4) == 2 and default_workers(16) == 2
    # a data-parallel stage's ranks share its cores: 16 cores, 2 stages, 4 ranks each → 2 threads a rank
    assert thread_env(2, cores=16, processes=4)["OMP_NUM_THREADS"] == "2"
    assert thread_env(1, cores=2, processes=4)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    # the user's own setting is kept, and passed on explicitly (a Dask worker's environment says 1)
    assert thread_env(2, cores=2) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
