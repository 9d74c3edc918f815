"""Data sets as LightningDataModules; images are float tensors in [0, 1] of shape (C, H, W)."""
from fsl.data.cifar import load_cifar10, read_cifar_binary
from fsl.data.datamodule import ImageDataModule, create_datamodule, stratified_split
from fsl.data.errors import ChecksumError, DatasetNotFoundError
from fsl.data.idx import read_idx, write_idx
from fsl.data.sources import load_fashion_mnist, load_mnist, load_mnist5k, make_synthetic, mnist5k_tensors
from fsl.data.subsets import stratified_subset

__all__ = ["ImageDataModule", "create_datamodule", "stratified_split", "ChecksumError", "DatasetNotFoundError",
           "read_idx", "write_idx", "read_cifar_binary", "load_cifar10", "load_mnist", "load_fashion_mnist",
           "load_mnist5k", "make_synthetic", "mnist5k_tensors", "stratified_subset"]
