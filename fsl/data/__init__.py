"""Data sets as LightningDataModules; images are float tensors in [0, 1] of shape (C, H, W).

The data module (Lightning) is imported on first use, so that ``fsl.data.subsets`` and the readers
can be used by the Lightning-free math (geometry, inversion) without importing Lightning.
"""
from fsl.data.cifar import load_cifar10, read_cifar_binary
from fsl.data.errors import ChecksumError, DatasetNotFoundError
from fsl.data.idx import read_idx, write_idx
from fsl.data.sources import load_fashion_mnist, load_mnist, load_mnist5k, make_synthetic, mnist5k_tensors
from fsl.data.subsets import stratified_subset

_LAZY = {"ImageDataModule", "create_datamodule", "stratified_split"}


def __getattr__(name: str):
    if name in _LAZY:
        from fsl.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'fsl.data' has no attribute {name!r}")


__all__ = ["ImageDataModule", "create_datamodule", "stratified_split", "ChecksumError", "DatasetNotFoundError",
           "read_idx", "write_idx", "read_cifar_binary", "load_cifar10", "load_mnist", "load_fashion_mnist",
           "load_mnist5k", "make_synthetic", "mnist5k_tensors", "stratified_subset"]
