import hashlib
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from fsl.data import (ChecksumError, DatasetNotFoundError, create_datamodule, read_cifar_binary, read_idx,
                      stratified_split, write_idx)
from fsl.data import cifar as cifar_mod
from fsl.data.augment import random_crop, random_hflip
from fsl.data.files import locate_or_fetch, verify_file


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((7, 5, 3)) * 200).astype(dtype)
    path = tmp_path / f"x-idx3-ubyte{suffix}"
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_idx_reader_matches_the_published_format(tmp_path):
    # Header written by hand, as in LeCun's description: magic 0x00000801, count, then labels.
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 2, 9]))
    np.testing.assert_array_equal(read_idx(path), [7, 2, 9])
    truncated = tmp_path / "bad-idx1-ubyte"
    truncated.write_bytes(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes([7, 2]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(truncated)


def test_cifar_binary_parser(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 11).astype(np.uint8)
    images = rng.integers(0, 256, (11, 3, 32, 32)).astype(np.uint8)
    # real layout: <1 x label><1024 x red><1024 x green><1024 x blue>, row-major 32x32 planes
    records = np.concatenate([labels[:, None], images.reshape(11, -1)], axis=1)
    path = tmp_path / "data_batch_1.bin"
    records.tofile(path)
    got_images, got_labels = read_cifar_binary(path)
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_images, images)
    assert got_images[3, 1, 5, 7] == records[3, 1 + 1024 + 5 * 32 + 7]
    (tmp_path / "short.bin").write_bytes(records.tobytes()[:-5])
    with pytest.raises(ValueError, match="record size"):
        read_cifar_binary(tmp_path / "short.bin")


def test_checksum_mismatch_is_an_error(tmp_path):
    path = tmp_path / "f.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(b"payload")
    good = hashlib.md5(path.read_bytes()).hexdigest()
    verify_file(path, md5=good)
    verify_file(path, payload_sha256=hashlib.sha256(b"payload").hexdigest())
    with pytest.raises(ChecksumError, match="mismatch"):
        verify_file(path, md5="0" * 32)
    with pytest.raises(ChecksumError):
        locate_or_fetch("demo", ["f.gz"], [tmp_path], tmp_path, [], {"f.gz": {"md5": "0" * 32}})


def test_missing_data_set_names_files_and_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_OFFLINE", "1")
    dm = create_datamodule("mnist", root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup()
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "mnist") in msg


def test_missing_cifar_archive_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError) as err:
        create_datamodule("cifar10", root=str(tmp_path)).setup()
    assert "cifar-10-binary.tar.gz" in str(err.value) and str(tmp_path) in str(err.value)


def test_cifar_corrupt_archive_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("FSL_OFFLINE", "1")
    (tmp_path / cifar_mod.ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(ChecksumError):
        cifar_mod.prepare_cifar10(tmp_path)
    assert not (tmp_path / cifar_mod.FOLDER).exists()  # nothing extracted from a bad archive


def test_cifar_manifest_detects_tampering(tmp_path):
    folder = tmp_path / cifar_mod.FOLDER
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in cifar_mod.TRAIN_FILES + cifar_mod.TEST_FILES:
        rec = np.concatenate([rng.integers(0, 10, (4, 1)), rng.integers(0, 256, (4, 3072))], 1).astype(np.uint8)
        rec.tofile(folder / name)
    cifar_mod._write_manifest(folder)
    data = cifar_mod.load_cifar10(tmp_path)
    assert data["train"][0].shape == (20, 3, 32, 32) and data["test"][1].shape == (4,)
    with open(folder / "test_batch.bin", "r+b") as fh:
        fh.write(b"\x05")
    with pytest.raises(ChecksumError):
        cifar_mod.load_cifar10(tmp_path)


def test_mnist5k_split_is_stratified_seeded_and_disjoint():
    a = create_datamodule("mnist5k", seed=3)
    a.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (3500, 500, 1000)
    assert np.bincount(a.val_set.labels.numpy()).tolist() == [50] * 10
    assert np.bincount(a.test_set.labels.numpy()).tolist() == [100] * 10
    b = create_datamodule("mnist5k", seed=3)
    b.setup()
    assert torch.equal(a.val_set.images, b.val_set.images)
    # the held-out splits are keyed by split_seed alone: another training seed, the same test split
    c = create_datamodule("mnist5k", seed=7)
    c.setup()
    assert torch.equal(a.test_set.images, c.test_set.images) and torch.equal(a.val_set.images, c.val_set.images)
    keys = {name: {bytes(img.numpy()) for img in ds.images} for name, ds in
            (("train", a.train_set), ("val", a.val_set), ("test", a.test_set))}
    # the three splits are disjoint (as sets of distinct images: mnist5k holds no duplicates across them)
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    x, y = next(iter(a.train_dataloader()))
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert a.class_names == [str(i) for i in range(10)]


def test_validation_is_held_out_from_training_never_the_test_split():
    dm = create_datamodule("synthetic", val_size=40, synthetic={"num_train": 200, "num_test": 60})
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (160, 40, 60)
    assert not torch.equal(dm.val_set.images[:5], dm.test_set.images[:5])
    with pytest.raises(ValueError, match="val_size must be > 0"):
        create_datamodule("synthetic", val_size=0)
    with pytest.raises(ValueError, match="would leave no training images"):
        create_datamodule("synthetic", val_size=500, synthetic={"num_train": 200}).setup()
    with pytest.raises(ValueError, match="test_size"):
        create_datamodule("mnist5k", test_size=0).setup()


def test_stratified_split_counts():
    labels = np.repeat(np.arange(3), [50, 30, 20])
    keep, held = stratified_split(labels, 10, seed=0)
    assert np.bincount(labels[held]).tolist() == [5, 3, 2]
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == 100


def test_train_eval_loader_is_unaugmented_and_ordered():
    dm = create_datamodule("synthetic", crop_padding=4, hflip=True,
                           synthetic=dict(num_train=64, num_test=32, input_shape=[3, 32, 32]))
    dm.setup()
    xs = torch.cat([x for x, _ in dm.train_eval_dataloader()])
    torch.testing.assert_close(xs, dm.train_set.images.float() / 255)
    assert dm.model_kwargs()["input_shape"] == [3, 32, 32]


def test_augmentation_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    # every crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = random_hflip(x, p=1.0, generator=g)
    torch.testing.assert_close(flipped, x.flip(3))
    torch.testing.assert_close(random_hflip(x, p=0.0, generator=g), x)


def test_fashion_mnist_from_debian_package_if_present(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    dm = create_datamodule("fashion_mnist", root=str(tmp_path))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    assert np.bincount(dm.test_set.labels.numpy()).tolist() == [1000] * 10
    assert np.bincount(dm.val_set.labels.numpy()).tolist() == [500] * 10
    assert dm.class_names[9] == "Ankle boot"


def test_unknown_data_set_lists_valid_names():
    with pytest.raises(ValueError, match="mnist5k"):
        create_datamodule("imagenet")
