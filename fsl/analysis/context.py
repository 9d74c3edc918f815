"""What an analysis sees: the model and its head, the data, cached feature sets, DDP sharding and
the results of the analyses that ran before it."""
from __future__ import annotations

from typing import Any, Callable

import torch

from fsl.analysis.distributed import sharded, world
from fsl.analysis.features import FeatureSet, extract_features
from fsl.data.subsets import stratified_subset
from fsl.models.base import LinearHead

Tensor = torch.Tensor


class Context:
    """The run an analysis is computed in (one training step, or one checkpoint in ``analyze.py``).

    Args:
        model: an fsl model (``forward_features``, ``forward_head``, ``head``, ``feature_domain``).
        tensors: ``tensors(split) -> (images (N, C, H, W) in [0, 1], labels (N,))`` for ``"train"``,
            ``"val"``, ``"test"`` (an fsl data module's ``tensors``).
        eval_split: the evaluation samples' split: ``"val"`` during training, ``"test"`` in ``analyze.py``.
        seed: subsets are fixed, seeded and stratified by class (:func:`fsl.data.subsets.stratified_subset`):
            training samples by ``seed``, evaluation ones by ``seed + 1``.
        n_train, n_eval: default subset sizes (None = the whole split) for analyses that do not set theirs.
        batch_size: feature-extraction batch size.
        class_names, data_name: of the data set. epoch: the training epoch (None in ``analyze.py``).
        figures: whether analyses should draw figures (off when nothing would log them).
        progress: show tqdm bars.
    """

    def __init__(self, model, tensors: Callable[[str], tuple[Tensor, Tensor]], *, eval_split: str = "val",
                 seed: int = 0, n_train: int | None = None, n_eval: int | None = None, batch_size: int = 1000,
                 device: torch.device | str | None = None, class_names=None, data_name: str = "",
                 epoch: int | None = None, figures: bool = True, progress: bool = False):
        self.model = model
        self._tensors = tensors
        self.eval_split = eval_split
        self.seed, self.n_train, self.n_eval = int(seed), n_train, n_eval
        self.batch_size = int(batch_size)
        p = next(iter(model.parameters()), None)
        self.device = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
        self.data_name = str(data_name)
        self.epoch = epoch
        self.want_figures = bool(figures)
        self.progress = bool(progress)
        self.results: dict[str, Any] = {}
        self.cache: dict[Any, Any] = {}
        self._names = None if class_names is None else [str(c) for c in class_names]
        self._head: LinearHead | None = None

    @classmethod
    def from_datamodule(cls, model, datamodule, **kw) -> "Context":
        """A context over an fsl ``ImageDataModule`` (set up), with its class names and name."""
        if datamodule is None or not hasattr(datamodule, "tensors"):
            raise RuntimeError("the analyses need an fsl ImageDataModule (trainer.fit(..., datamodule=dm))")
        kw.setdefault("class_names", getattr(datamodule, "class_names", None))
        kw.setdefault("data_name", getattr(datamodule, "name", ""))
        return cls(model, datamodule.tensors, **kw)

    # -- model ----------------------------------------------------------------------------------
    @property
    def head(self) -> LinearHead:
        """The head and feature domain (CPU tensors), read once per context."""
        if self._head is None:
            self._head = LinearHead.from_model(self.model)
        return self._head

    @property
    def class_names(self) -> list[str]:
        if self._names is None:
            self._names = [str(i) for i in range(self.model.head.out_features)]
        return self._names

    # -- data -----------------------------------------------------------------------------------
    def split_seed(self, split: str) -> int:
        return self.seed if split == "train" else self.seed + 1

    def tensors(self, split: str) -> tuple[Tensor, Tensor]:
        key = ("tensors", split)
        if key not in self.cache:
            self.cache[key] = self._tensors(split)
        return self.cache[key]

    def subset(self, split: str, n: int | None = None) -> Tensor:
        """Indices ``(k,)`` of the fixed, seeded subset of ``split`` of size ``n`` (None: the context's
        default for that split; 0 or larger than the split: everything), stratified by label and in
        an interleaved order whose every prefix is stratified too (never the stored order, which
        may be sorted by class): :func:`fsl.data.subsets.stratified_subset`."""
        if n is None:
            n = self.n_train if split == "train" else self.n_eval
        labels = self.tensors(split)[1]
        N = len(labels)
        k = N if n is None or int(n) <= 0 or int(n) >= N else int(n)
        key = ("subset", split, k)
        if key not in self.cache:
            self.cache[key] = stratified_subset(labels, k, self.split_seed(split))
        return self.cache[key]

    def images(self, split: str, n: int | None = None) -> Tensor:
        """The images ``(N, C, H, W)`` of :meth:`subset`, CPU."""
        return self.tensors(split)[0][self.subset(split, n)]

    def labels(self, split: str, n: int | None = None) -> Tensor:
        return self.tensors(split)[1][self.subset(split, n)]

    def features(self, split: str, n: int | None = None) -> FeatureSet:
        """Features and logits of :meth:`subset` (CPU float32), extracted once per context; under
        DDP each rank extracts its shard and every rank gets all rows. Non-finite features raise."""
        index = self.subset(split, n)
        key = ("features", split, len(index))
        if key not in self.cache:
            images, labels = self.tensors(split)
            self.cache[key] = fs = self._extract(images, labels, index, f"{split} features")
            fs.check_finite(f"{split} features")
        return self.cache[key]

    def train_features(self, n: int | None = None) -> FeatureSet:
        return self.features("train", n)

    def eval_features(self, n: int | None = None) -> FeatureSet:
        return self.features(self.eval_split, n)

    def eval_images(self, n: int | None = None) -> Tensor:
        return self.images(self.eval_split, n)

    def _extract(self, images: Tensor, labels: Tensor, index: Tensor, desc: str) -> FeatureSet:
        def fn(rows: Tensor) -> dict[str, Tensor]:
            fs = extract_features(self.model, images[index[rows]], labels[index[rows]], batch_size=self.batch_size,
                                  device=self.device, progress=self.progress, desc=desc)
            return {"features": fs.features, "logits": fs.logits}

        out = sharded(fn, len(index))
        return FeatureSet(features=out["features"], logits=out["logits"], labels=labels[index].cpu(), index=index)

    # -- DDP ------------------------------------------------------------------------------------
    @staticmethod
    def world() -> tuple[int, int]:
        """``(rank, world_size)``; ``(0, 1)`` outside DDP."""
        return world()

    @staticmethod
    def sharded(fn: Callable[[Tensor], dict[str, Tensor]], n: int) -> dict[str, Tensor]:
        """Run ``fn(rows)`` on this rank's share of ``range(n)`` and gather the row outputs in order."""
        return sharded(fn, n)

    # -- dependencies ---------------------------------------------------------------------------
    def result(self, name: str):
        """The result of an analysis that ran before this one (declared in ``requires``/``uses``),
        or None when it did not run."""
        return self.results.get(name)
