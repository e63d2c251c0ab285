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


class CorruptArtifactError(ValueError):
    """An artifact that cannot be read or whose content differs from the hash written with it."""


def _digest_into(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)}|".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"{type(k).__name__}:{k}=".encode())
            _digest_into(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__} {len(obj)}|".encode())
        for v in obj:
            _digest_into(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r}|".encode())


def content_digest(obj: Any) -> str:
    """sha256 over a nested structure of dicts, lists and tensors (dtype, shape and bytes), the same
    wherever the tensors live."""
    h = hashlib.sha256()
    _digest_into(h, obj)
    return h.hexdigest()


def save_checkpoint(path: str | Path, obj: dict) -> Path:
    """Save a checkpoint dict atomically with the hash of its content (`sha256`), which
    `load_checkpoint` checks."""
    return atomic_torch_save(path, {**obj, "sha256": content_digest(obj)})


def load_checkpoint(path: str | Path, map_location=None) -> dict:
    """A checkpoint written by `save_checkpoint`, after checking its content against its hash."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # a damaged zip, a truncated file: torch's message varies
        raise CorruptArtifactError(f"{path}: not a readable checkpoint ({type(err).__name__}); "
                                   f"rerun the stage that writes it") from None
    expected = ckpt.pop("sha256", None) if isinstance(ckpt, dict) else None
    if expected is None:
        raise CorruptArtifactError(f"{path}: no content hash in it (not written by save_checkpoint); "
                                   f"rerun the stage that writes it")
    found = content_digest(ckpt)
    if found != expected:
        raise CorruptArtifactError(f"{path}: content hash {found[:16]} differs from the {expected[:16]} "
                                   f"written with it — the file is corrupt; rerun the stage that writes it")
    return ckpt


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
    found = sha256_file(folder / "shard.pt")
    if found != manifest["sha256"]:
        raise CorruptArtifactError(f"{folder / 'shard.pt'}: content hash {found[:16]} differs from the "
                                   f"{manifest['sha256'][:16]} in its manifest — the shard is corrupt")
    return {**torch.load(folder / "shard.pt", weights_only=True), "manifest": manifest}
