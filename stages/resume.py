"""Resume states: a long training stage killed part-way (a pre-empted node, an OOM, a time limit)
continues from its latest state when it runs again with the same inputs.

Every `run.resume_every` steps a training stage writes everything its output depends on that is not
yet in its output — weights, optimiser, EMA, every random stream, the data order's position, the
curve so far — to `.resume/STAGE-KEY.pt`, atomically. `.resume/` is not a DVC output, so DVC does not
remove it before rerunning the stage. KEY hashes the stage's command, the values of the params it
declares and the content of every dependency `dvc.yaml` lists for it (its code included): a rerun
with the same inputs finds the state, any change of input finds none (and the stage's stale states
are removed). A state that does not load (truncated, corrupt, another version) is reported in one
line and removed, and the stage starts fresh. The state is removed when the stage succeeds.
Under torchrun, rank 0 writes and every rank reads: the state holds every rank's global random
streams (gathered when it is written), and each rank resumes its own.

The sampling stages (rehearsal; replay in rounds mode) resume by finished batch instead: each batch's
images are written, when it is done, to a file of their own under `.resume/STAGE-KEY/` with the
state of every random stream after it (`Batches`), so a rerun with the same inputs takes the batches
already drawn and samples only the rest; a part that does not load ends what is taken there. One
process only: under torchrun the sampling stages start over.

Resumed output is byte-identical to an uninterrupted run's (tests/test_resume.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import torch
import yaml

RESUME_DIR = ".resume"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dep_hash(path: Path) -> str:
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{_file_hash(f)}\0".encode())
        return h.hexdigest()
    return _file_hash(path) if path.exists() else "missing"


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def stage_entry(kind: str, task: int, round: int, dvc_yaml: str = "dvc.yaml") -> tuple[str, dict] | None:
    """This stage's (name, entry) in dvc.yaml, matched by its command; None when there is none."""
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    for name, entry in stages.items():
        words = shlex.split(entry.get("cmd", ""))
        if f"stages.{kind}" not in words:
            continue
        args = dict(zip(words[words.index(f"stages.{kind}") + 1 :: 2], words[words.index(f"stages.{kind}") + 2 :: 2]))
        if int(args.get("--task", 0)) == task and int(args.get("--round", 0)) == round:
            return name, entry
    return None


def stage_key(name: str, entry: dict, params: dict) -> str:
    """What the stage's output depends on: its command, its params' values, its deps' content."""
    declared = {}
    for item in entry.get("params", []):
        for key in (item if isinstance(item, dict) else {item: None}):
            if isinstance(key, str):
                declared[key] = _lookup(params, key)
    blob = {"name": name, "cmd": entry.get("cmd"), "params": declared,
            "deps": {d: _dep_hash(Path(d)) for d in entry.get("deps", [])}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Resume:
    """The resume state of one stage invocation (see the module's doc). Inert when `every` is 0 or
    when dvc.yaml has no entry for the stage (a stage run by hand outside the graph)."""

    def __init__(self, kind: str, task: int, round: int, params, every: int, main: bool = True,
                 folder: str = RESUME_DIR):
        self.every, self.main, self.path = every, main, None
        found = stage_entry(kind, task, round) if every > 0 else None
        if found is None:
            return
        from params.record import unrecorded

        name, entry = found
        with unrecorded():  # the key hashes the declared params only; reading the rest is not a use
            tree = params.model_dump(mode="json")
        self.path = Path(folder) / f"{name}-{stage_key(name, entry, tree)}.pt"
        # this stage's states (and folders of finished batches) made under other inputs
        self._stale = [p for p in Path(folder).glob(f"{name}-*") if p.with_suffix("") != self.path.with_suffix("")
                       and (p.suffix == ".pt" or p.is_dir())] if Path(folder).is_dir() else []

    def _remove_stale(self) -> None:
        if self.main:
            for p in self._stale:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def due(self, step: int, last: int) -> bool:
        """Whether to write a state after `step` (never after the last step: the output follows)."""
        return self.path is not None and step % self.every == 0 and step < last

    def load(self) -> dict | None:
        """The latest state of this stage with these inputs, or None (nothing there, or unreadable:
        reported in one line, removed). States of this stage with other inputs are removed."""
        if self.path is None:
            return None
        self._remove_stale()
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            if not isinstance(state, dict) or "step" not in state:
                raise ValueError("not a resume state")
        except Exception as err:  # truncated, corrupt, foreign: start fresh
            why = " ".join(str(err).split())[:120]
            print(f"resume state {self.path} is unreadable ({type(err).__name__}: {why}); starting fresh",
                  file=sys.stderr)
            if self.main:
                self.path.unlink(missing_ok=True)
            return None
        print(f"resuming from {self.path} at step {state['step']}", file=sys.stderr)
        return state

    def save(self, state: dict) -> None:
        if self.path is None or not self.main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def finish(self) -> None:
        """The stage succeeded: its state is no longer needed."""
        if self.path is not None and self.main:
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.path.with_suffix(""), ignore_errors=True)

    def batches(self, part: str, streams: list[torch.Generator], world_size: int = 1) -> "Batches | None":
        """The finished batches of sampling run `part` of this stage (None: not kept — resume states
        off, no dvc.yaml entry, or several processes). Stale folders of this stage are removed."""
        if self.path is None or world_size > 1:
            return None
        self._remove_stale()
        return Batches(self.path.with_suffix("") / part, streams)


class Batches:
    """A sampling run's finished batches, one file each (`batch-000012.pt`: the batch's outputs and
    the state of every stream in `streams` after it), written atomically as each batch ends.
    `restore()` returns the batches already drawn, from the first on and without a gap, and puts the
    streams where they were after the last of them."""

    def __init__(self, folder: Path, streams: list[torch.Generator]):
        self.folder, self.streams = folder, streams

    def _path(self, i: int) -> Path:
        return self.folder / f"batch-{i:06d}.pt"

    def restore(self) -> dict[int, tuple]:
        done, last = {}, None
        while self._path(len(done)).exists():
            path = self._path(len(done))
            try:
                entry = torch.load(path, map_location="cpu", weights_only=False)
                outputs, states = entry["outputs"], entry["streams"]
                if len(states) != len(self.streams):
                    raise ValueError(f"{len(states)} random streams, not {len(self.streams)}")
            except Exception as err:  # truncated or foreign: take what came before it
                why = " ".join(str(err).split())[:120]
                print(f"resume part {path} is unreadable ({type(err).__name__}: {why}); "
                      f"sampling from batch {len(done)}", file=sys.stderr)
                break
            done[len(done)], last = outputs, states
        for stale in sorted(self.folder.glob("batch-*.pt")) if self.folder.is_dir() else []:
            if int(stale.stem.split("-")[1]) >= len(done):
                stale.unlink(missing_ok=True)  # after a gap or an unreadable part: drawn again
        if last is not None:
            for g, state in zip(self.streams, last):
                g.set_state(state)
            print(f"resuming {self.folder} after {len(done)} finished batches", file=sys.stderr)
        return done

    def save(self, i: int, outputs: tuple) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self._path(i).with_name(f".batch-{i:06d}.{os.getpid()}.tmp")
        torch.save({"outputs": outputs, "streams": [g.get_state() for g in self.streams]}, tmp)
        os.replace(tmp, self._path(i))
