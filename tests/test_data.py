"""Facts about guide.data: dataset shapes and splits, determinism, class-incremental task splits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from guide.data import (DATASETS, FASHION_MNIST_DIR, MNIST5K_TEST_PER_CLASS, DatasetNotFoundError, ImageDataset,
                        imagenet100_classes, imagenet_crop, load_dataset, mnist5k_path, read_idx, relabel, task_classes, task_subset)


@pytest.fixture(scope="module")
def mnist5k() -> ImageDataset:
    return load_dataset("mnist5k")


# --------------------------------------------------------------------------- mnist5k


def test_mnist5k_shapes_and_range(mnist5k):
    assert mnist5k.train_x.shape == (4000, 1, 28, 28) and mnist5k.test_x.shape == (1000, 1, 28, 28)
    assert mnist5k.train_x.dtype == torch.float32 and mnist5k.train_y.dtype == torch.int64
    assert (mnist5k.num_classes, mnist5k.channels, mnist5k.image_size) == (10, 1, 28)
    assert mnist5k.class_names == [str(c) for c in range(10)]
    for x in (mnist5k.train_x, mnist5k.test_x):
        assert x.min() == -1.0 and x.max() == 1.0
    assert torch.bincount(mnist5k.train_y).tolist() == [400] * 10
    assert torch.bincount(mnist5k.test_y).tolist() == [MNIST5K_TEST_PER_CLASS] * 10 == [100] * 10


def test_mnist5k_split_is_first_400_then_last_100_per_class_in_file_order(mnist5k):
    with gzip.open(mnist5k_path(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    for c in (0, 7):
        rows = table[table[:, 784] == c, :784].reshape(-1, 1, 28, 28)
        expected = torch.from_numpy(rows).float() / 127.5 - 1
        assert torch.equal(mnist5k.train_x[mnist5k.train_y == c], expected[:400])
        assert torch.equal(mnist5k.test_x[mnist5k.test_y == c], expected[400:])


def test_image_size_resizes_to_requested_shape():
    small = load_dataset("mnist5k", image_size=16)
    assert small.train_x.shape == (4000, 1, 16, 16) and small.test_x.shape == (1000, 1, 16, 16)
    assert small.image_size == 16 and small.train_x.min() >= -1 and small.train_x.max() <= 1
    assert load_dataset("synthetic", image_size=8).train_x.shape[-2:] == (8, 8)


def test_missing_mnist5k_file_names_the_path(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="mnist_5k.csv.gz") as err:
        load_dataset("mnist5k", root=tmp_path)
    assert str(tmp_path / "mnist_5k.csv.gz") in str(err.value)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="'nope'") as err:
        load_dataset("nope")
    assert all(name in str(err.value) for name in DATASETS)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_defaults_and_determinism():
    a, b = load_dataset("synthetic"), load_dataset("synthetic", seed=0)
    assert a.train_x.shape == (4 * 64, 1, 16, 16) and a.test_x.shape == (4 * 16, 1, 16, 16)
    assert a.num_classes == 4 and torch.bincount(a.train_y).tolist() == [64] * 4
    assert a.train_x.min() >= -1 and a.train_x.max() <= 1
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field))
    other = load_dataset("synthetic", seed=1)
    assert not torch.equal(a.train_x, other.train_x) and not torch.equal(a.test_x, other.test_x)


def test_synthetic_options():
    d = load_dataset("synthetic", num_classes=6, channels=3, image_size=12, train_per_class=5, test_per_class=2)
    assert d.train_x.shape == (30, 3, 12, 12) and d.test_x.shape == (12, 3, 12, 12) and d.num_classes == 6


def test_synthetic_is_learnable_by_tiny_cnn_in_a_few_dozen_steps():
    d = load_dataset("synthetic")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, d.num_classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        batch = torch.randint(len(d.train_y), (32,), generator=generator)
        loss = nn.functional.cross_entropy(net(d.train_x[batch]), d.train_y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (net(d.test_x).argmax(1) == d.test_y).float().mean().item()
    assert accuracy >= 0.9


# --------------------------------------------------------------------------- task splits


@pytest.mark.parametrize("num_classes,num_tasks,first,seed", [(10, 5, None, None), (10, 5, None, 3),
                                                                (100, 6, 50, None), (100, 11, 50, 1993)])
def test_task_classes_partition_all_classes(num_classes, num_tasks, first, seed):
    tasks = task_classes(num_classes, num_tasks, first_task_classes=first, class_order_seed=seed)
    flat = [c for task in tasks for c in task]
    assert len(tasks) == num_tasks
    assert len(flat) == len(set(flat)) == num_classes and set(flat) == set(range(num_classes))
    sizes = [len(t) for t in tasks]
    if first is None:
        assert sizes == [num_classes // num_tasks] * num_tasks
    else:
        assert sizes == [first] + [(num_classes - first) // (num_tasks - 1)] * (num_tasks - 1)


def test_task_classes_natural_order():
    assert task_classes(10, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert task_classes(10, 3, first_task_classes=4) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert task_classes(4, 1) == [[0, 1, 2, 3]]


def test_task_classes_seeded_order_reproducible_and_not_natural():
    a, b = task_classes(100, 10, class_order_seed=1993), task_classes(100, 10, class_order_seed=1993)
    assert a == b
    assert a != task_classes(100, 10) and a != task_classes(100, 10, class_order_seed=7)


def test_task_classes_indivisible_errors_name_fields():
    with pytest.raises(ValueError, match="num_classes=10") as err:
        task_classes(10, 3)
    assert "num_tasks=3" in str(err.value)
    with pytest.raises(ValueError, match="first_task_classes=5") as err:
        task_classes(10, 4, first_task_classes=5)
    assert "num_classes=10" in str(err.value)
    with pytest.raises(ValueError, match="first_task_classes=11"):
        task_classes(10, 2, first_task_classes=11)


def test_relabel_and_task_subset_keep_train_and_test_consistent():
    d = load_dataset("synthetic", num_classes=6, train_per_class=8, test_per_class=3)
    tasks = task_classes(6, 3, class_order_seed=5)
    order = [c for task in tasks for c in task]
    r = relabel(d, order)
    assert r.class_names == [d.class_names[c] for c in order]
    assert torch.equal(r.train_x, d.train_x) and torch.equal(r.test_x, d.test_x)
    original = torch.tensor(order)
    assert torch.equal(original[r.train_y], d.train_y) and torch.equal(original[r.test_y], d.test_y)
    for t, task in enumerate(tasks):
        new_ids = list(range(2 * t, 2 * t + 2))  # after relabelling, task t is a contiguous id block
        train_x, train_y = task_subset(r.train_x, r.train_y, new_ids)
        test_x, test_y = task_subset(r.test_x, r.test_y, new_ids)
        assert set(train_y.tolist()) == set(test_y.tolist()) == set(new_ids)
        assert len(train_x) == 2 * 8 and len(test_x) == 2 * 3
        # Same images as selecting the task's original classes before relabelling.
        assert torch.equal(train_x, task_subset(d.train_x, d.train_y, task)[0])
    seen_x, seen_y = task_subset(r.test_x, r.test_y, range(4))  # "classes seen so far" = first k ids
    assert len(seen_x) == 4 * 3 and seen_y.max() == 3


def test_relabel_rejects_non_permutation():
    with pytest.raises(ValueError, match="permutation"):
        relabel(load_dataset("synthetic"), [0, 1, 1, 2])


# --------------------------------------------------------------------------- CIFAR


def test_missing_cifar10_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data_batch_1" in str(err.value)
    with pytest.raises(DatasetNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", root=tmp_path)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar_pickles_in_torchvision_layout_load(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3072), dtype=np.uint8)
    data[1] = 255
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        _pickle(folder / name, {"data": data, "labels": [3, 9]})
    d = load_dataset("cifar10", root=tmp_path)
    assert d.train_x.shape == (10, 3, 32, 32) and d.test_x.shape == (2, 3, 32, 32) and d.num_classes == 10
    assert d.train_x[0].max() == -1 and d.train_x[1].min() == 1 and d.test_y.tolist() == [3, 9]
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        _pickle(folder / name, {"data": data, "fine_labels": [42, 99], "coarse_labels": [0, 1]})
    d = load_dataset("cifar100", root=tmp_path, image_size=16)
    assert d.train_x.shape == (2, 3, 16, 16) and d.num_classes == 100 and d.train_y.tolist() == [42, 99]


# --------------------------------------------------------------------------- ImageNet-100 (64x64)


def test_imagenet100_list_is_pinned():
    wnids = imagenet100_classes()
    assert len(wnids) == len(set(wnids)) == 100
    assert wnids == sorted(wnids)  # ImageFolder's order, as the reference labels them
    assert wnids[:3] == ["n01558993", "n01692333", "n01729322"] and wnids[-1] == "n13040303"


def test_imagenet_crop_keeps_the_reference_ratio():
    # the reference's ImageNet100 / ImageNet100128 / ImageNet100224 transforms
    assert [imagenet_crop(s) for s in (64, 128, 224)] == [(76, 64), (152, 128), (266, 224)]


def test_imagenet100_image_folder_layout(tmp_path):
    from PIL import Image

    wnids = imagenet100_classes()
    base = tmp_path / "imagenet100_64"
    for split in ("train", "val"):
        for label, wnid in enumerate(wnids):
            (base / split / wnid).mkdir(parents=True)
            pixels = np.full((64, 64, 3), label, dtype=np.uint8)
            Image.fromarray(pixels).save(base / split / wnid / "a.png")
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(base / "train" / wnids[0] / "b.JPEG")
    d = load_dataset("imagenet100_64", root=tmp_path)
    assert d.train_x.shape == (101, 3, 64, 64) and d.test_x.shape == (100, 3, 64, 64)
    assert d.num_classes == 100 and d.class_names == wnids and d.test_y.tolist() == list(range(100))
    assert torch.allclose(d.test_x[5], torch.full((3, 64, 64), 5 / 127.5 - 1))
    # A missing class folder is reported by name.
    # Another size is cut from the source files at that size (resize 19, centre crop 16).
    small = load_dataset("imagenet100_64", root=tmp_path, image_size=16)
    assert small.train_x.shape == (101, 3, 16, 16) and torch.allclose(small.test_x[5], d.test_x[5, :, :16, :16])
    (base / "val" / wnids[7] / "a.png").unlink()
    (base / "val" / wnids[7]).rmdir()
    with pytest.raises(DatasetNotFoundError, match=f"val/{wnids[7]}"):
        load_dataset("imagenet100_64", root=tmp_path)


# --------------------------------------------------------------------------- fashion_mnist / IDX


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_parser_and_fashion_layout(tmp_path):
    images = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 5, 9]))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2])  # uncompressed files work too
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2]))
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    d = load_dataset("fashion_mnist", root=tmp_path)
    assert d.train_x.shape == (3, 1, 28, 28) and d.test_y.tolist() == [1, 2] and d.class_names[9] == "Ankle boot"


def test_idx_parser_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="promises"):
        read_idx(tmp_path / "short")


def test_missing_fashion_mnist_names_folder_and_files(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train-images-idx3-ubyte") as err:
        load_dataset("fashion_mnist", root=tmp_path)
    assert str(tmp_path) in str(err.value)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    d = load_dataset("fashion_mnist")
    assert d.train_x.shape == (60000, 1, 28, 28) and d.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(d.train_y).tolist() == [6000] * 10 and torch.bincount(d.test_y).tolist() == [1000] * 10
    assert d.train_x.min() == -1 and d.train_x.max() == 1


def test_torch_artifacts_are_byte_identical_whatever_their_file_name(tmp_path):
    """The bytes of a saved artifact depend on its content only, not on the (temporary) name it was
    written under, so DVC's hashes agree across reruns and clones."""
    from guide.io import atomic_torch_save

    obj = {"w": torch.arange(6.0).reshape(2, 3), "task": 1}
    a, b = atomic_torch_save(tmp_path / "a.pt", obj), atomic_torch_save(tmp_path / "sub" / "other.pt", obj)
    assert a.read_bytes() == b.read_bytes()
    assert torch.equal(torch.load(b, weights_only=True)["w"], obj["w"])
