"""The types every dataset and tokenizer share: a dataset's shape, the tokenizer protocol, token datasets."""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from torch import Tensor

from harness.errors import UserError, did_you_mean, short

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class DatasetShape:
    grid: tuple[int, ...]
    vocab_size: int
    num_classes: int
    modalities: tuple | None = None  # a joint dataset's models.modalities.Modality entries
    caption_vocabulary: tuple[str, ...] = ()  # the words of its captions; empty: no captions
    split_sizes: tuple[tuple[str, int], ...] = ()  # (split, items) where known without reading data

    def split_size(self, split: str) -> int | None:
        """How many items ``split`` holds (None: known only once its data is read)."""
        return dict(self.split_sizes).get(split)


class Tokenizer(Protocol):
    """encode: images (N, C, H, W) float in [0, 1] -> tokens (N, L); decode: the inverse."""

    vocab_size: int
    grid: tuple[int, ...]

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, tokens: Tensor) -> Tensor: ...


class TokenRows(Protocol):
    """A split's token rows left on disk, read a batch at a time: ``read(index (b,)) -> (b, L)
    long``; picklable (a DataLoader's worker processes read through their copies)."""

    def __len__(self) -> int: ...

    def read(self, index: np.ndarray) -> Tensor: ...


@dataclass(frozen=True)
class TokenDataset:
    """tokens (N, L) long, labels (N,) long or None. A streamed split (``Dataset.stream``) has
    no tokens in memory (None): ``rows`` reads them a batch at a time."""

    name: str
    split: str
    tokens: Tensor | None
    labels: Tensor | None
    num_classes: int
    tokenizer: Tokenizer
    captions: tuple[str, ...] | None = (
        None  # one per example: the text condition (harness.data.sources.captioned_canvases)
    )
    rows: TokenRows | None = None  # the tokens on disk, for a split streamed instead of loaded

    @property
    def grid(self) -> tuple[int, ...]:
        return self.tokenizer.grid

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def seq_len(self) -> int:
        return math.prod(self.grid)

    def __len__(self) -> int:
        return len(self.rows) if self.tokens is None else self.tokens.shape[0]

    def images(self) -> Tensor:
        """The dataset decoded to images (N, C, H, W) in [0, 1]."""
        return self.tokenizer.decode(self.tokens)


def split_indices(n: int, num_heldout: int, seed: int) -> dict[str, np.ndarray]:
    """A fixed, seeded permutation cut into train and held-out parts."""
    order = np.random.default_rng(seed).permutation(n)
    return {"heldout": np.sort(order[:num_heldout]), "train": np.sort(order[num_heldout:])}


@dataclass(frozen=True)
class Dataset:
    """Everything the harness asks of one dataset; a module under ``harness.data.sources`` defines
    one as its module attribute ``DATASET`` and the registry (``harness.data.registry``) finds it.

    load(split, **options) -> TokenDataset; shape(**options) -> DatasetShape without loading or
    tokenizing anything (plans and validation); real_images(split, **options) -> (images (N, C, H, W)
    or clips (N, C, T, H, W) in [0, 1], labels (N,) or None): what samples are scored against (for
    a learned tokenizer the originals, so its reconstruction error counts against every sample).
    ``default_extractor``: the feature extractor its samples are scored with unless a config names
    another (None: a config must name one). The options are typed by the keyword-only parameters
    of ``shape``, or the fields of ``options`` (a dataclass) for a ``shape`` that takes ``**options``;
    without either, ``shape`` checks them itself. ``stream(split, **options) -> TokenDataset``,
    for data too large to hold (shard folders): the split with its tokens left on disk (``rows``),
    which training reads a batch at a time (``harness.data.shard_loader``); None: training loads it.
    ``stamp(**options)``, for data read from files a user may rewrite in place: a value that
    changes when they are (sizes, modification times), so that what a worker keeps loaded
    between trials is read again; None: the data never changes under the same options.
    ``check_files(needs_reference, **options)``: raises UserError for files a study could not read
    (checked once before a study starts on this machine; validation reads no file).
    """

    name: str
    load: Callable[..., TokenDataset]
    shape: Callable[..., DatasetShape]
    real_images: Callable[..., tuple[Tensor, Tensor | None]]
    default_extractor: str | None = None
    summary: str = ""
    options: type | None = None  # a dataclass of the options, for a ``shape`` that takes **options
    stream: Callable[..., TokenDataset] | None = None
    stamp: Callable[..., Any] | None = None  # (**options) -> changes when its files are rewritten
    check_files: Callable[..., None] | None = None  # (needs_reference, **options): refuses bad files
    _options: type[BaseModel] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_options", _options_model(self.name, self.shape, self.options))

    def option_names(self) -> list[str] | None:
        """The options it takes (None: checked by ``shape`` itself)."""
        return None if self._options is None else sorted(self._options.model_fields)

    def check_options(self, options: dict[str, Any]) -> DatasetShape:
        """The shape under ``options``; an unknown option, a value of the wrong type or out of
        range raises UserError naming ``data.options.<option>``, before any data loads."""
        if not isinstance(options, dict):
            raise UserError(
                f"data.options: expected a mapping of option: value; got {type(options).__name__}"
            )
        if self._options is not None:
            known = self.option_names()
            for key in options:
                if key not in known:
                    raise UserError(
                        f"data.options.{str(key)[:100]}: not an option of dataset {self.name!r};"
                        " expected some"
                        f" of {known}{did_you_mean(key, known) if len(str(key)) <= 200 else ''}"
                    )
            fields = self._options.model_fields
            missing = [key for key, info in fields.items() if info.is_required() and key not in options]
            if missing:
                raise UserError(
                    f"data.options for {self.name!r}: missing {missing}; expected {missing} and optionally "
                    f"{[key for key in known if key not in missing]}"
                )
            try:
                self._options.model_validate(options)
            except ValidationError as err:
                e = err.errors()[0]
                where = ".".join(str(p) for p in e["loc"])
                expected = _EXPECTED.get(e["type"], e["msg"])
                if e["type"] in ("greater_than_equal", "less_than_equal"):
                    bound = e["ctx"].get("ge", e["ctx"].get("le"))
                    expected = f"expected {'at least' if 'ge' in e['ctx'] else 'at most'} {bound}"
                raise UserError(f"data.options.{where}: {short(e.get('input'))}; {expected}") from None
        try:
            return self.shape(**options)
        except TypeError as err:  # an option a **options shape does not take
            raise UserError(f"data.options for {self.name!r}: {err}") from None
        except ValueError as err:
            raise UserError(str(err)) from None


# pydantic error type -> what was expected, in the words of the other refusals.
_EXPECTED = {
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "string_type": "expected a string",
    "dict_type": "expected a mapping",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
}


def _options_model(
    name: str, shape: Callable[..., DatasetShape], options: type | None
) -> type[BaseModel] | None:
    """A pydantic model of the dataset's options: the fields of ``options`` (a dataclass) or the
    keyword-only parameters of ``shape`` (annotations and defaults; a parameter without a default
    is required); None when ``shape`` takes ``**options`` and no dataclass is given. Scalars are
    strict (2.7 is not an integer, "yes" not a boolean), floats finite, lists read as tuples."""
    if options is not None:
        hints = typing.get_type_hints(options)
        fields = {
            f.name: (_strict(hints[f.name]), ... if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(options)
        }
    else:
        params = inspect.signature(shape).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        hints = typing.get_type_hints(shape)
        fields = {
            p.name: (_strict(hints.get(p.name, Any)), ... if p.default is p.empty else p.default)
            for p in params
            if p.kind is p.KEYWORD_ONLY
        }
    if "seed" in fields and fields["seed"][0] is StrictInt:  # what numpy's and torch's generators take
        fields["seed"] = (Annotated[StrictInt, Field(ge=0, le=2**32 - 1)], fields["seed"][1])
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    return create_model(f"{name.title().replace('-', '')}Options", __config__=config, **fields)


_STRICT = {int: StrictInt, bool: StrictBool, str: StrictStr, float: float}


def _strict(tp: Any) -> Any:
    """The annotation with its scalars strict (containers keep converting lists to tuples)."""
    if tp in _STRICT:
        return _STRICT[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is None or not args:
        return tp
    if origin is types.UnionType:
        return typing.Union[tuple(_strict(a) for a in args)]  # noqa: UP007 (built from parts)
    return origin[tuple(_strict(a) if a is not Ellipsis else a for a in args)]
