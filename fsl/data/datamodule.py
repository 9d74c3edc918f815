"""LightningDataModule over in-memory uint8 images; batches are float tensors in [0, 1], (B, C, H, W)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from fsl.data.augment import random_crop, random_hflip
from fsl.data.sources import CLASS_NAMES, LOADERS
from fsl.data.subsets import stratified_split as _split

# Per-channel statistics of each training set, for the normalisation inside the models.
STATS = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


# Held-out sizes when not given: validation from the training data; a test split for sources without one.
DEFAULT_VAL_SIZE = {"mnist5k": 500}  # synthetic: num_train // 8, at most 64
DEFAULT_TEST_SIZE = {"mnist5k": 1000}


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) + labels; indexing with a list of indices returns a whole batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index].float().div_(255.0), self.labels[index]

    def __getitems__(self, indices: list[int]):
        # DataLoader fetches a whole batch with one indexing op; see ``collate_batch``.
        return self[torch.as_tensor(indices, dtype=torch.long)]


def collate_batch(batch):
    """The dataset already returns ``(images, labels)`` batches: nothing to collate."""
    return batch


def epoch_seed(seed: int, epoch: int, stream: int = 0, rank: int = 0) -> int:
    """A 63-bit seed that is a function of ``(seed, epoch, stream, rank)`` only (numpy's SeedSequence
    hashing), so that the data order and augmentation of an epoch do not depend on what ran before:
    a run resumed from an end-of-epoch checkpoint continues bit-identically."""
    words = np.random.SeedSequence([int(seed), int(epoch), int(stream), int(rank)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) & (2**63 - 1)


class EpochRandomSampler(RandomSampler):
    """A :class:`~torch.utils.data.RandomSampler` whose permutation is keyed by ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before every training epoch (as for a ``DistributedSampler``, which
    it swaps in under DDP); the permutation of epoch ``e`` is the same whether the run started at
    epoch 0 or was resumed at epoch ``e``.
    """

    def __init__(self, data_source, seed: int = 0):
        super().__init__(data_source, generator=torch.Generator())
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        return super().__iter__()


def stratified_split(labels: np.ndarray, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, holdout)`` with ``holdout`` samples, class proportions preserved, seeded
    (:func:`fsl.data.subsets.stratified_split`), each sorted: a split keeps the stored order."""
    keep, held = _split(np.asarray(labels), holdout, seed)
    return np.sort(keep.numpy()), np.sort(held.numpy())


class ImageDataModule(pl.LightningDataModule):
    """One data set by name: ``mnist5k``, ``mnist``, ``fashion_mnist``, ``cifar10``, ``synthetic``.

    Splits (select on validation, report on test): ``val_size`` (> 0) training images are held out
    as a seeded, stratified validation split; checkpoints are selected and the per-epoch analyses
    run on it. The test split is only for reporting (``test/*`` metrics, ``analyze.py``). A source
    without a test split (``mnist5k``) first holds out ``test_size`` images as its test split, then
    the validation split from the rest. The held-out draws are keyed by ``split_seed`` alone, so
    the test split is the same for every training ``seed``. ``train_eval_dataloader()`` is the
    training set without augmentation and without shuffling (for training-set features).
    """

    def __init__(self, name: str = "mnist5k", root: str = "data", batch_size: int = 128,
                 eval_batch_size: int = 512, val_size: int | None = None, seed: int = 0, num_workers: int = 0,
                 crop_padding: int = 0, hflip: bool = False, limit_train: int | None = None,
                 synthetic: dict | None = None, test_size: int | None = None, split_seed: int = 0):
        super().__init__()
        if name not in LOADERS:
            raise ValueError(f"unknown data set {name!r}; valid names: {', '.join(sorted(LOADERS))}")
        self.name, self.root = name, str(root)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        if val_size is None:
            n_syn = int((synthetic or {}).get("num_train", 512))
            val_size = max(1, min(64, n_syn // 8)) if name == "synthetic" else DEFAULT_VAL_SIZE.get(name, 5000)
        test_size = DEFAULT_TEST_SIZE.get(name) if test_size is None else test_size
        self.val_size, self.seed, self.num_workers = int(val_size), int(seed), int(num_workers)
        self.test_size, self.split_seed = (None if test_size is None else int(test_size)), int(split_seed)
        if self.val_size <= 0:
            raise ValueError(f"data.val_size must be > 0, got {val_size}: checkpoints are selected on a validation "
                             f"split held out from the training data, and the test split is only for reporting "
                             f"(e.g. data.val_size=5000)")
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)
        self.limit_train = limit_train
        self.synthetic = dict(synthetic or {})
        # augmentation stream, re-seeded from (seed, epoch, rank) at the first batch of every epoch
        self._aug_generator, self._aug_epoch = torch.Generator(), None
        self.train_set = self.val_set = self.test_set = None
        self._shape_info()

    # -- static description, known without loading the data ----------------------------------
    def _shape_info(self) -> None:
        if self.name == "synthetic":
            shape = tuple(self.synthetic.get("input_shape", (1, 28, 28)))
            self.input_shape = shape
            self.num_classes = int(self.synthetic.get("num_classes", 10))
            self.mean, self.std = (0.5,) * shape[0], (0.25,) * shape[0]
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        else:
            self.input_shape = (3, 32, 32) if self.name == "cifar10" else (1, 28, 28)
            self.num_classes = 10
            self.mean, self.std = STATS[self.name]
            self.class_names = list(CLASS_NAMES[self.name])

    def model_kwargs(self) -> dict:
        """What a model needs to know about the data: shapes, class count, normalisation."""
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "mean": list(self.mean), "std": list(self.std)}

    # -- loading ----------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        raw = LOADERS[self.name](Path(self.root), **self.synthetic)
        x_train, y_train = raw["train"]
        if "test" in raw:
            x_test, y_test = raw["test"]
        else:  # no test split shipped: hold one out first, keyed by split_seed only
            if not self.test_size or self.test_size <= 0:
                raise ValueError(f"data set {self.name!r} ships no test split: set data.test_size > 0 "
                                 f"(e.g. data.test_size=1000) to hold one out of its {len(y_train)} images")
            keep, held = stratified_split(y_train, self._holdout(self.test_size, len(y_train), "test_size"),
                                          self.split_seed)
            x_test, y_test = x_train[held], y_train[held]
            x_train, y_train = x_train[keep], y_train[keep]
        keep, held = stratified_split(y_train, self._holdout(self.val_size, len(y_train), "val_size"),
                                      self.split_seed + 1)
        x_val, y_val = x_train[held], y_train[held]
        x_train, y_train = x_train[keep], y_train[keep]
        if self.limit_train and int(self.limit_train) < len(y_train):
            keep, _ = stratified_split(y_train, len(y_train) - int(self.limit_train), self.seed)
            x_train, y_train = x_train[keep], y_train[keep]
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        self.train_set = ImageTensorDataset(t(x_train), t(y_train))
        self.val_set = ImageTensorDataset(t(x_val), t(y_val))
        self.test_set = ImageTensorDataset(t(x_test), t(y_test))

    def _holdout(self, n: int, total: int, key: str) -> int:
        if n >= total:
            raise ValueError(f"data.{key}={n} would leave no training images (the split has {total}); "
                             f"choose data.{key} < {total}")
        return n

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        # A (batch_size, RandomSampler) loader: Lightning recognises it as shuffled and swaps in a
        # DistributedSampler (seeded, keyed by epoch too) under DDP.
        sampler = EpochRandomSampler(dataset, self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_batch,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

    def train_eval_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.eval_batch_size, shuffle=False)

    def augment(self, x: torch.Tensor, epoch: int = 0, rank: int = 0) -> torch.Tensor:
        """Random crop / flip of a training batch ``(B, C, H, W)``. The random stream restarts from
        ``(seed, epoch, rank)`` whenever ``epoch`` changes and runs on within the epoch."""
        if (epoch, rank) != self._aug_epoch:
            self._aug_generator.manual_seed(epoch_seed(self.seed, epoch, stream=1, rank=rank))
            self._aug_epoch = (epoch, rank)
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self._aug_generator)
        if self.hflip:
            x = random_hflip(x, 0.5, self._aug_generator)
        return x

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training and (self.crop_padding or self.hflip):
            x, y = batch
            batch = (self.augment(x, trainer.current_epoch, trainer.global_rank), y)
        return batch

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All images of a split as float (N, C, H, W) in [0, 1] and labels (N,)."""
        self.setup()
        ds = {"train": self.train_set, "val": self.val_set, "test": self.test_set}[split]
        return ds[torch.arange(len(ds))]


def create_datamodule(name: str, **kwargs) -> ImageDataModule:
    """Build the data module of a data set by name (see :class:`ImageDataModule`)."""
    return ImageDataModule(name=name, **kwargs)
