"""A paper preset end to end in miniature, before spending GPU-hours on it: a few images per class
written in the dataset's real on-disk layout (CIFAR's pickled batches, the ImageNet100-64 ImageFolder
tree of PNG files, Fashion-MNIST's IDX files), the preset unchanged but for step counts (training
steps, T and the length of each respaced chain), sample counts, batch sizes and the networks' channel
widths (UNet and classifier), and every stage of its graph run in one process (`pipeline.inprocess`): the real loaders, its UNet
settings (attention, conditioning, scale-shift norm, up/down-sampling blocks), its classifier, its
samplers and respacings, its guidance mode and scales.

    python -m pipeline.miniature --preset cifar10_5 --workdir /tmp/mini      # one preset
    python -m pipeline.miniature --all --workdir /tmp/mini                   # every paper preset and fashion_mnist5

Prints, per preset, what changed from the preset, the stages run and the time; checks that the
accuracy matrix, the replay measurements and the replay grids came out well formed. Exit 1 naming
the preset and the problem otherwise. Nothing is downloaded; the workdir holds data and artifacts.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import pickle
import struct
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]  # the project, where the code files a stage depends on are
CODE = {"guide", "params", "stages", "pipeline"}
PAPER = ("cifar10_2", "cifar10_5", "cifar100_5", "cifar100_10", "imagenet100_64_5", "fashion_mnist5")
TRAIN_PER_CLASS, TEST_PER_CLASS = 4, 2


# --- data in each dataset's own layout ---------------------------------------------------------------
def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """uint8 images whose mean brightness depends on the class (so a classifier can tell some apart)."""
    base = (labels.reshape(-1, *[1] * len(shape)) * 37 % 200).astype(np.int64)
    return np.clip(base + rng.integers(0, 56, (n, *shape)), 0, 255).astype(np.uint8)


def write_cifar10(root: Path, rng: np.random.Generator) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in [(f"data_batch_{i}", TRAIN_PER_CLASS) for i in range(1, 6)] + [("test_batch", TEST_PER_CLASS)]:
        labels = np.repeat(np.arange(10), per_class if name == "test_batch" else 1)
        with open(folder / name, "wb") as f:  # the five training batches share the train images
            pickle.dump({"data": _images(rng, len(labels), (3 * 32 * 32,), labels), "labels": labels.tolist()}, f)


def write_cifar100(root: Path, rng: np.random.Generator) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(100), per_class)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": _images(rng, len(labels), (3 * 32 * 32,), labels), "fine_labels": labels.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{c:03d}" for c in range(100)]}, f)


def write_imagenet100_64(root: Path, rng: np.random.Generator) -> None:
    """PNG files of 80×96 (not square, not 64: the loader's resize-76-and-centre-crop-64 runs)."""
    from PIL import Image

    from guide.data import imagenet100_classes

    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", TEST_PER_CLASS)):
        for label, wnid in enumerate(imagenet100_classes()):
            folder = root / "imagenet100_64" / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(_images(rng, per_class, (80, 96, 3), np.full(per_class, label))):
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.png")


def _idx(path: Path, data: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, data.ndim]) + b"".join(struct.pack(">i", d) for d in data.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + data.astype(np.uint8).tobytes())


def write_fashion_mnist(folder: Path, rng: np.random.Generator) -> None:
    """The four IDX files, gzipped as Debian ships them, in `folder` (data.root of fashion_mnist)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        labels = np.repeat(np.arange(10), per_class)
        _idx(folder / f"{prefix}-images-idx3-ubyte.gz", _images(rng, len(labels), (28, 28), labels))
        _idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


# dataset -> (writer, the folder under the data root that data.root names: "" = the root itself)
WRITERS = {"cifar10": (write_cifar10, ""), "cifar100": (write_cifar100, ""),
           "imagenet100_64": (write_imagenet100_64, ""), "fashion_mnist": (write_fashion_mnist, "fashion-mnist")}


# --- the preset, shrunk --------------------------------------------------------------------------------
# the miniature's T (below 10 the reference's linear schedule runs from 100/T·0.01 to 100/T·0.02, here
# 0.25 to 0.5; from 10 to 20 its last β would reach 1) and the steps a respaced chain ("ddimN") keeps
MINI_T, MINI_STEPS = 4, 2


def shrunk_respacing(spec: str) -> str:
    """A respacing of the same kind with fewer steps: "ddimN" → "ddim2" (the DDIM stride over T = 4);
    "" (every step) stays "", now 4 steps."""
    return f"ddim{MINI_STEPS}" if spec else spec


def shrink(name: str, data_root: Path) -> dict:
    """The overrides that make preset `name` a miniature: step counts (training steps; T and the
    number of steps of each respaced chain, the sampler and the kind of respacing kept), sample
    counts, batch sizes and the networks' widths, nothing else. The UNet's width is the smallest
    multiple of 16 whose 1-hot class embedding (4 × width) holds every class and whose every level
    splits into whole heads; where the preset fixes the channels per head (`num_head_channels`, 64 for
    ImageNet100-64) those shrink too, to at most 32, so each attention level keeps the number of heads
    a 64-channel miniature would have and costs a third as much. The classifier's first stage: 8 channels."""
    from params import preset

    p = preset(name)
    u = p.diffusion.unet
    head = min(u.num_head_channels, 32) if u.num_head_channels > 0 else None
    width = max(16, head or 16)
    while 4 * width <= p.num_classes or any(width * m % (head or u.num_heads) for m in u.channel_mult):
        width += 16
    unet = {"model_channels": width} | ({"num_head_channels": head} if head and head != u.num_head_channels else {})
    tasks = p.data.num_tasks
    over = {
        "diffusion": {"steps_first": 1, "steps_later": 1, "batch_size": 1, "num_timesteps": MINI_T,
                      "train_respacing": shrunk_respacing(p.diffusion.train_respacing),
                      "unet": unet},
        # one image per old task, drawn in one batch
        "rehearsal": {"per_task": 1, "batch_size": tasks, "respacing": shrunk_respacing(p.rehearsal.respacing)},
        # the fewest images a classifier batch splits into real and replayed for every task, replay in one batch
        "replay": {"batch_size": tasks, "respacing": shrunk_respacing(p.replay.respacing)},
        "classifier": {"steps_first": 2, "steps_later": 2 * p.replay.rounds, "batch_size": tasks, "width": 8},
        "oracle": {"steps": 2, "batch_size": 8},
        "evaluate": {"batch_size": 64, "grid_images": 1},
        "run": {"device": "cpu"},
    }
    if p.data.dataset in WRITERS:
        sub = WRITERS[p.data.dataset][1]
        over["data"] = {"root": str(data_root / sub if sub else data_root)}
    return over


def graph_problems(p, raw: dict) -> list[str]:
    """After a run, in its folder: what `dvc repro` of the rendered graph would refuse (a declared
    dependency or output that is not there, a declared params key params.yaml lacks), one line each."""
    from pipeline.graph import build_graph

    problems = []
    for st in build_graph(p):
        problems += [f"stage {st.name}: declared {what} {path} is missing"
                     for what, paths in (("dependency", st.deps), ("output", st.outputs)) for path in paths
                     if not (Path(path).exists() or what == "dependency" and path.split("/")[0] in CODE
                             and (ROOT / path).is_file())]
        for key in st.params:
            node = raw
            for part in key.split("."):
                if not isinstance(node, dict) or part not in node:
                    problems.append(f"stage {st.name}: declared params key {key} is not in params.yaml")
                    break
                node = node[part]
    return problems


def run_preset(name: str, workdir: Path) -> dict:
    """Preset `name` in miniature under workdir/NAME: data written, every stage run in this process.
    Returns what was run and found; RuntimeError naming the problem."""
    from params import dump_params, load_params, preset
    from pipeline.inprocess import run_all

    folder = workdir / name
    data_root = workdir / "data"
    dataset = preset(name).data.dataset
    marker = data_root / f".{dataset}.written"
    if dataset in WRITERS and not marker.exists():
        WRITERS[dataset][0](data_root / WRITERS[dataset][1] if WRITERS[dataset][1] else data_root,
                            np.random.default_rng(0))
        marker.touch()
    folder.mkdir(parents=True, exist_ok=True)
    over = shrink(name, data_root)
    (folder / "params.yaml").write_text(dump_params(preset(name, **over)))
    started = time.perf_counter()
    with contextlib.chdir(folder):
        stages = run_all("params.yaml")
        p = load_params("params.yaml")
    seconds = time.perf_counter() - started
    with contextlib.chdir(folder):  # what `dvc repro` of this graph would check: declared files and params keys
        problems = graph_problems(p, yaml.safe_load(Path("params.yaml").read_text()))
    if problems:
        raise RuntimeError(f"{name}: {problems[0]} (and {len(problems) - 1} more)" if len(problems) > 1
                           else f"{name}: {problems[0]}")
    summary = json.loads((folder / "metrics/summary.json").read_text())
    T = p.data.num_tasks
    matrix = summary["accuracy_matrix"]
    if len(matrix) != T or any(len(row) != T for row in matrix):
        raise RuntimeError(f"{name}: the accuracy matrix is not {T}×{T}")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if (v is None) != (j < i) or (v is not None and not 0 <= v <= 1):
                raise RuntimeError(f"{name}: accuracy matrix entry ({i}, {j}) = {v}")
    missing = [f for t in range(1, T) for f in (f"metrics/replay/task{t}.json", f"plots/replay/task{t}.png")
               if not (folder / f).is_file()] if p.generated_replay else []
    if missing:
        raise RuntimeError(f"{name}: missing {', '.join(missing)}")
    for t in range(1, T) if p.generated_replay else ():
        replay = json.loads((folder / f"metrics/replay/task{t}.json").read_text())
        for twin in ("guided", "unguided"):
            bad = {k: v for k, v in replay[twin].items() if not (isinstance(v, float | int) and 0 <= v <= 1)}
            if bad or not replay["count"] > 0:
                raise RuntimeError(f"{name}: metrics/replay/task{t}.json: {twin} {bad or 'count 0'}")
        with Image.open(folder / f"plots/replay/task{t}.png") as grid:
            grid.load()  # decodes whole
            if min(grid.size) < 8:
                raise RuntimeError(f"{name}: plots/replay/task{t}.png is {grid.size[0]}×{grid.size[1]}")
    return {"preset": name, "stages": len(stages), "seconds": seconds, "final": summary["final_average_accuracy"],
            "changed": over}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.miniature", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", action="append", choices=PAPER, help="a preset (repeatable)")
    which.add_argument("--all", action="store_true", help=f"all of {', '.join(PAPER)}")
    ap.add_argument("--workdir", required=True, help="where the data and each preset's artifacts go")
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    workdir = Path(args.workdir).resolve()
    failed = 0
    for name in PAPER if args.all else args.preset:
        try:
            r = run_preset(name, workdir)
        except RuntimeError as err:
            print(f"pipeline.miniature: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {r['stages']} stages in {r['seconds']:.1f} s, final average accuracy {r['final']:.3f} "
              f"(changed: {json.dumps(r['changed'], separators=(',', ':'))})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
