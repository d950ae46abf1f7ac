"""The dataset registry (harness.data.registry): each dataset's shape agrees with its data, names and
options are refused naming the field and the alternatives, register() guards a taken name, and each
dataset's default extractor is a registered one."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config.trial import ConfigError, build_trial
from harness.data import registry
from harness.data.registry import DATASETS, dataset_shape, get_dataset, load_dataset, real_images
from harness.data.types import SPLITS, Dataset, DatasetShape
from harness.errors import UserError
from harness.evaluation import EXTRACTORS, default_extractor_name

CHEAP = [
    ("digits", {}),
    ("digits", {"num_heldout": 100, "seed": 3}),
    ("digit-canvases", {"num_train": 12, "num_heldout": 5}),
    ("digit-canvases", {"num_train": 6, "num_heldout": 4, "canvas": 18}),
    ("captioned-canvases", {"num_train": 12, "num_heldout": 5}),
    ("moving-digits", {}),
    ("moving-digits", {"levels": 3, "conditional": False}),
]
SHARDS = {"path": "/nonexistent/shards", "grid": [8, 8], "vocab_size": 16}  # shape reads no file


def image_grid(shape: DatasetShape) -> tuple[int, ...]:
    """The grid the decoded images live on: the image modality's of a joint dataset."""
    if shape.modalities:
        (image,) = [m for m in shape.modalities if m.name == "image"]
        return image.grid
    return shape.grid


@pytest.mark.parametrize(("name", "options"), CHEAP, ids=[f"{n}-{o}" for n, o in CHEAP])
def test_shape_matches_the_loaded_data(name: str, options: dict) -> None:
    shape = dataset_shape(name, **options)
    for split in SPLITS:
        data = load_dataset(name, split, **options)
        assert (data.grid, data.vocab_size, data.num_classes) == (
            shape.grid,
            shape.vocab_size,
            shape.num_classes,
        )
        N = len(data)
        assert shape.split_size(split) == N  # what validation checks num_reference against
        assert data.tokens.shape == (N, math.prod(shape.grid)) and data.tokens.dtype == torch.long
        assert 0 <= int(data.tokens.min()) and int(data.tokens.max()) < shape.vocab_size
        if shape.num_classes:
            assert data.labels.shape == (N,) and 0 <= int(data.labels.min())
            assert int(data.labels.max()) < shape.num_classes
        else:
            assert data.labels is None
        if shape.caption_vocabulary:
            assert len(data.captions) == N
            assert {w for c in data.captions for w in c.split()} <= set(shape.caption_vocabulary)
        else:
            assert data.captions is None
        if shape.modalities:
            assert data.tokenizer.layout.modalities == shape.modalities
            for m, part in zip(
                shape.modalities, data.tokenizer.layout.split(data.tokens).values(), strict=True
            ):
                assert 0 <= int(part.min()) and int(part.max()) < m.vocab_size  # no [MASK] in data
        images, labels = real_images(name, split, **options)
        assert images.shape[0] == N and tuple(images.shape[2:]) == image_grid(shape)
        assert 0 <= float(images.min()) and float(images.max()) <= 1
        if data.labels is not None:
            assert torch.equal(labels, data.labels)
        # Pixel tokens are the nearest grey level of the real images.
        pixels = data.tokenizer.image if shape.modalities else data.tokenizer
        assert (data.images() - images).abs().max() <= 0.5 / (pixels.levels - 1) + 1e-6


def test_the_split_options_are_applied() -> None:
    train, heldout = (load_dataset("digits", s, num_heldout=100) for s in SPLITS)
    default_train = load_dataset("digits", "train")
    assert len(heldout) == 100 and len(train) + len(heldout) == len(default_train) + len(
        load_dataset("digits", "heldout")
    )
    other = load_dataset("digits", "heldout", num_heldout=100, seed=1)
    assert not torch.equal(other.tokens, heldout.tokens)  # another seed, another split
    assert len(load_dataset("digit-canvases", "train", num_train=7, num_heldout=3)) == 7
    assert len(load_dataset("digit-canvases", "heldout", num_train=7, num_heldout=3)) == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_dataset("digitz"),
        lambda: load_dataset("digitz"),
        lambda: dataset_shape("digitz"),
        lambda: real_images("digitz"),
    ],
    ids=["get_dataset", "load_dataset", "dataset_shape", "real_images"],
)
def test_an_unknown_dataset_lists_the_known_ones(call) -> None:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "data.name" in message and "'digitz'" in message and "did you mean 'digits'" in message
    assert all(repr(name) in message for name in DATASETS)


def test_an_unknown_split_lists_the_splits() -> None:
    for call in (lambda: load_dataset("digits", "test"), lambda: real_images("digits", "test")):
        with pytest.raises(UserError) as info:
            call()
        assert "'test'" in str(info.value) and all(repr(s) in str(info.value) for s in SPLITS)


UNKNOWN = [
    ("digits", {}),
    ("animals", {}),
    ("digit-canvases", {}),
    ("captioned-canvases", {}),
    pytest.param("moving-digits", {}),
    pytest.param("shards", SHARDS),
]


@pytest.mark.parametrize(("name", "required"), UNKNOWN)
def test_an_unknown_option_is_named_as_data_options_key(name: str, required: dict) -> None:
    with pytest.raises(UserError, match=r"data\.options\.bogus_option"):
        dataset_shape(name, **required, bogus_option=1)


def test_an_unknown_option_suggests_the_closest() -> None:
    with pytest.raises(UserError, match=r"data\.options\.num_heldot.*did you mean 'num_heldout'"):
        dataset_shape("digits", num_heldot=5)
    with pytest.raises(UserError, match=r"data\.options\.tokeniser.*did you mean 'tokenizer'"):
        dataset_shape("animals", tokeniser={})


WRONGLY_TYPED = [
    ("digits", {"seed": "a"}, "data.options.seed", "'a'"),
    ("digits", {"num_heldout": True}, "data.options.num_heldout", "True"),
    ("digits", {"num_heldout": 2.5}, "data.options.num_heldout", "2.5"),
    ("animals", {"tokenizer": 3}, "data.options.tokenizer", "3"),
    ("digit-canvases", {"canvas": "16"}, "data.options.canvas", "'16'"),
    ("captioned-canvases", {"num_train": 1.5}, "data.options.num_train", "1.5"),
    ("moving-digits", {"levels": 2.5}, "data.options.levels", "2.5"),
    ("moving-digits", {"conditional": "yes"}, "data.options.conditional", "'yes'"),
    pytest.param(
        "shards",
        {**SHARDS, "num_classes": "a"},
        "data.options.num_classes",
        "'a'",
    ),
    pytest.param("shards", {**SHARDS, "vocab_size": 2.7}, "data.options.vocab_size", "2.7"),
    pytest.param(
        "shards",
        {**SHARDS, "grid": "ab"},
        "data.options.grid",
        "'ab'",
    ),
]


@pytest.mark.parametrize(("name", "options", "field", "value"), WRONGLY_TYPED)
def test_a_wrongly_typed_option_names_the_field_and_value(
    name: str, options: dict, field: str, value: str
) -> None:
    with pytest.raises(UserError) as info:
        dataset_shape(name, **options)
    assert field in str(info.value) and value in str(info.value)
    with pytest.raises(ConfigError) as info:  # and so at validation, before any data loads
        build_trial({"data": {"name": name, "options": options}})
    assert field in str(info.value)


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("digit-canvases", {"canvas": 15}, "data.options.canvas"),
        ("captioned-canvases", {"num_train": 0}, "num_train"),
        ("moving-digits", {"levels": 1}, "data.options.levels"),
        ("moving-digits", {"motion": "zigzag"}, "data.options.motion"),
        pytest.param("digits", {"num_heldout": -5}, "data.options.num_heldout"),
        pytest.param("digits", {"num_heldout": 0}, "data.options.num_heldout"),
        pytest.param("digits", {"num_heldout": 5000}, "data.options.num_heldout"),
    ],
)
def test_an_out_of_range_option_is_refused_before_loading(name: str, options: dict, field: str) -> None:
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        dataset_shape(name, **options)


# ---- register / unregister ----------------------------------------------------------------------


def _toy(name: str) -> Dataset:
    def shape(*, size: int = 4) -> DatasetShape:
        return DatasetShape((size, size), 2, 0)

    def never(*args, **kwargs):
        raise AssertionError("not loaded in these tests")

    return Dataset(name, load=never, shape=shape, real_images=never)


def test_register_refuses_a_different_dataset_under_a_taken_name() -> None:
    original = DATASETS["digits"]
    with pytest.raises(ValueError, match="'digits'"):
        registry.register(_toy("digits"))
    assert DATASETS["digits"] is original
    assert registry.register(original) is original  # the same one again: a no-op
    with pytest.raises(TypeError, match="Dataset"):
        registry.register(object())  # type: ignore[arg-type]


def test_a_registered_dataset_is_valid_everywhere_until_unregistered() -> None:
    toy = registry.register(_toy("unit-toy"))
    try:
        assert get_dataset("unit-toy") is toy
        assert dataset_shape("unit-toy", size=2) == DatasetShape((2, 2), 2, 0)
        assert toy.option_names() == ["size"]
        with pytest.raises(UserError, match=r"data\.options\.size.*'x'"):
            dataset_shape("unit-toy", size="x")  # typed by its shape's signature
        with pytest.raises(UserError, match="'unit-toy'"):
            get_dataset("unit-tot")  # now listed among the known names
        with pytest.raises(ValueError, match="'unit-toy'"):
            registry.register(_toy("unit-toy"))  # another object of the same name
    finally:
        registry.unregister("unit-toy")
    registry.unregister("unit-toy")  # twice: no error
    with pytest.raises(UserError):
        get_dataset("unit-toy")


# ---- default extractors -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_each_default_extractor_is_registered_and_an_override_wins(name: str) -> None:
    dataset = get_dataset(name)
    if dataset.default_extractor is None:
        with pytest.raises(UserError) as info:
            default_extractor_name(name)
        assert "eval.extractor" in str(info.value) and all(e in str(info.value) for e in EXTRACTORS)
    else:
        assert dataset.default_extractor in EXTRACTORS
        assert default_extractor_name(name) == dataset.default_extractor
    other = next(e for e in EXTRACTORS if e != dataset.default_extractor)
    assert default_extractor_name(name, other) == other
    with pytest.raises((KeyError, UserError), match="digits-cnnn"):
        default_extractor_name(name, "digits-cnnn")


@pytest.mark.parametrize("options", [{}, {"num_heldout": 500, "seed": 7}])
def test_the_animals_split_sizes_are_those_of_its_real_images(options: dict) -> None:
    """Known without training the tokenizer; the real images are what a reference draws from."""
    shape = dataset_shape("animals", **options)
    for split in SPLITS:
        assert shape.split_size(split) == len(real_images("animals", split, **options)[0])
    assert dataset_shape("shards", **SHARDS).split_size("train") is None  # known once its folder is read
