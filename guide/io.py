"""Files that are either whole or absent: every artifact is written to a temporary name in the same
folder and renamed into place, so a killed process never leaves a file that looks finished."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is renamed to `path`, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def torch_bytes(obj: Any) -> bytes:
    """`torch.save` of `obj` as bytes that depend on `obj` alone. (Saved to a path, torch names the
    zip's inner folder after the file, so a temporary file name would end up inside the bytes.)"""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    data = torch_bytes(obj)
    return _write(path, lambda p: p.write_bytes(data))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_shard(folder: str | Path, images: torch.Tensor, labels: torch.Tensor, manifest: dict,
               extra: dict[str, torch.Tensor] | None = None) -> dict:
    """Write `shard.pt` (images, labels, extra tensors) and `manifest.json` (the given facts plus
    count, classes and the shard's content hash). The manifest is written last: a folder without
    one is unfinished."""
    folder = Path(folder)
    (folder / "manifest.json").unlink(missing_ok=True)
    atomic_torch_save(folder / "shard.pt", {"images": images.contiguous(), "labels": labels, **(extra or {})})
    full = {"count": len(labels), "classes": sorted(set(labels.tolist())), **manifest,
            "sha256": sha256_file(folder / "shard.pt")}
    atomic_write_json(folder / "manifest.json", full)
    return full


def load_shard(folder: str | Path) -> dict[str, Any]:
    """The shard's tensors, after checking its manifest and content hash."""
    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path}: no manifest — the shard is missing or unfinished")
    manifest = json.loads(manifest_path.read_text())
    if sha256_file(folder / "shard.pt") != manifest["sha256"]:
        raise ValueError(f"{folder / 'shard.pt'}: content hash differs from its manifest")
    return {**torch.load(folder / "shard.pt", weights_only=True), "manifest": manifest}
