"""The registry of datasets: the ``DATASET`` of every module in ``harness.data.sources``.

The registry imports its implementations (it walks the sources package once, at import); a
source never imports the registry. ``register`` adds a dataset defined elsewhere (a plug-in or
a test's toy dataset) under the same checks.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from harness.data import sources
from harness.data.types import SPLITS, Dataset, DatasetShape, TokenDataset
from harness.errors import check_known
from harness.plugins import add, discover

DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    """Adds ``dataset`` under its name; a second, different dataset of that name is refused."""
    if not isinstance(dataset, Dataset):
        raise TypeError(f"register: expected a harness.data.types.Dataset; got {type(dataset).__name__}")
    return add(DATASETS, dataset.name, dataset, "dataset")


def unregister(name: str) -> None:
    """Removes a dataset added by ``register`` (tests)."""
    DATASETS.pop(name, None)


for _dataset in discover(sources, "DATASET", Dataset):
    register(_dataset)


def get_dataset(name: str) -> Dataset:
    """The dataset ``name``; an unknown name raises UserError listing the known ones."""
    check_known(name, DATASETS, "data.name")
    return DATASETS[name]


def load_dataset(name: str, split: str = "train", **options: Any) -> TokenDataset:
    check_known(split, SPLITS, "data split")
    return get_dataset(name).load(split, **options)


def open_split(name: str, split: str = "train", **options: Any) -> TokenDataset:
    """The split as whoever reads only its size, shape, labels or tokenizer (or its rows a batch at
    a time) needs it: streamed where the dataset can (its tokens left on disk: a shard folder of
    ImageNet as VQ ids is ~10 GB as int64 tensors), else loaded."""
    check_known(split, SPLITS, "data split")
    dataset = get_dataset(name)
    return (dataset.stream or dataset.load)(split, **options)


def dataset_shape(name: str, **options: Any) -> DatasetShape:
    """Grid, vocabulary and classes of ``name`` under ``options``, without loading anything; bad
    options raise UserError naming ``data.options.<option>``."""
    return get_dataset(name).check_options(options)


def real_images(name: str, split: str = "train", **options: Any) -> tuple[Tensor, Tensor | None]:
    """The real images (or clips) of a dataset split, not tokenized, with labels or None."""
    check_known(split, SPLITS, "data split")
    return get_dataset(name).real_images(split, **options)


def data_stamp(name: str, **options: Any) -> Any:
    """What changes when the dataset's files are rewritten in place (None: they never are); part
    of the key of what a worker keeps loaded between trials (reference images, their features)."""
    stamp = get_dataset(name).stamp
    return None if stamp is None else stamp(**options)
