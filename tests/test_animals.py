"""Animals data and the VQ tokenizer: safe unpickling, the split, round trips, determinism, the cache."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data.sources.animals import (
    animal_split,
    animal_tokenizer,
    animals,
    load_animal_arrays,
    load_numpy_pickle,
)
from harness.data.tokenizers import vq, vq_store
from harness.data.tokenizers.vq import VQConfig, VQTokenizer
from harness.data.tokenizers.vq_store import TokenizerCacheError, cached_tokenizer, context_entropy

# A few dozen steps on a narrow net: plumbing, not quality.
TINY = {"grid": 7, "codebook_size": 16, "code_dim": 8, "channels": 8, "steps": 6, "batch_size": 32}


@pytest.fixture(autouse=True)
def _cache_in_tmp_one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A fresh cache per test; one torch thread (a second one only adds contention for a tiny net)."""
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """200 real training images (200, 1, 28, 28) in [0, 1]."""
    return animal_split("train")[0][:200]


@pytest.fixture(scope="module")
def cached(images: torch.Tensor, tmp_path_factory: pytest.TempPathFactory) -> tuple[VQTokenizer, Path]:
    """A tiny tokenizer trained through the cache (150 train / 50 held-out images), and its file."""
    cache = tmp_path_factory.mktemp("vq-cache")
    tokenizer = cached_tokenizer(VQConfig(**TINY), images[:150], images[150:], cache, num_threads=1)
    return tokenizer, next(cache.rglob("vq-*.pt"))


class Evil:
    """Unpickles to a call of os.getcwd: a stand-in for any non-numpy global."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_unpickler_refuses_non_numpy_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump([np.zeros(3), Evil()], f)
    with pytest.raises(pickle.UnpicklingError, match="posix.getcwd|os.getcwd"):
        load_numpy_pickle(path)


def test_unpickler_reads_a_numpy_array(tmp_path: Path) -> None:
    path = tmp_path / "ok.gz"
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with gzip.open(path, "wb") as f:
        pickle.dump(array, f)
    np.testing.assert_array_equal(load_numpy_pickle(path), array)


def test_arrays_shapes_classes_and_deduplication() -> None:
    raw_images, raw_labels = load_animal_arrays(deduplicate=False)
    assert raw_images.shape == (10000, 28, 28) and raw_images.dtype == np.uint8
    assert raw_labels.shape == (10000,) and np.bincount(raw_labels).tolist() == [1000] * 10
    images, labels = load_animal_arrays()
    assert images.shape == (9716, 28, 28) and labels.shape == (9716,) and set(labels) == set(range(10))
    assert len(np.unique(images.reshape(len(images), -1), axis=0)) == len(images)
    assert not images.flags.writeable and not labels.flags.writeable


def test_split_is_disjoint_complete_and_deterministic() -> None:
    x_train, y_train = animal_split("train")
    x_held, y_held = animal_split("heldout")
    assert x_train.shape == (8716, 1, 28, 28) and x_held.shape == (1000, 1, 28, 28)
    assert x_train.dtype == torch.float32 and 0 <= x_train.min() and x_train.max() <= 1
    assert set(y_held.tolist()) == set(range(10))
    rows = {row.numpy().tobytes() for row in x_held.flatten(1)}
    assert not any(row.numpy().tobytes() in rows for row in x_train.flatten(1))
    torch.testing.assert_close(animal_split("heldout")[0], x_held, rtol=0, atol=0)
    assert not torch.equal(animal_split("heldout", seed=1)[1], y_held)
    with pytest.raises(ValueError, match="heldout"):
        animal_split("test")


def test_round_trip_shapes_dtypes_and_range(images: torch.Tensor, cached) -> None:
    tokenizer = cached[0]
    tokens = tokenizer.encode(images[:10])
    assert tokens.shape == (10, 49) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < tokenizer.vocab_size == 16
    decoded = tokenizer.decode(tokens)
    assert decoded.shape == (10, 1, 28, 28) and decoded.dtype == torch.float32
    assert 0 <= decoded.min() and decoded.max() <= 1
    torch.testing.assert_close(tokenizer.encode(decoded[:0]), torch.zeros(0, 49, dtype=torch.long))
    assert tokenizer.decode(torch.full((2, 49), 16)).shape == (2, 1, 28, 28)  # [MASK] id is clamped


def test_fine_grid_round_trip(images: torch.Tensor) -> None:
    tokenizer = VQTokenizer(vq.train_vqvae(images, VQConfig(**{**TINY, "grid": 14, "steps": 2})), {})
    assert tokenizer.grid == (14, 14) and tokenizer.encode(images[:3]).shape == (3, 196)


def test_training_is_deterministic(images: torch.Tensor, cached) -> None:
    again = VQTokenizer(vq.train_vqvae(images[:150], VQConfig(**TINY)), {})
    assert again.weights_sha256 == cached[0].weights_sha256
    other = VQTokenizer(vq.train_vqvae(images[:150], VQConfig(**{**TINY, "seed": 1})), {})
    assert other.weights_sha256 != again.weights_sha256


def test_cache_is_hit_and_carries_config_and_report(images: torch.Tensor, cached, monkeypatch) -> None:
    first, path = cached
    assert path.parent.name == "tokenizers" and path.parent.parent.name.startswith("vq-cache")
    monkeypatch.setattr(vq_store, "train_vqvae", lambda *a: pytest.fail("the cached tokenizer was retrained"))
    second = cached_tokenizer(VQConfig(**TINY), images[:150], images[150:], path.parent.parent)
    assert second.weights_sha256 == first.weights_sha256 and second.config == VQConfig(**TINY)
    assert second.metadata == first.metadata
    meta = second.metadata
    assert meta["weights_sha256"] == first.weights_sha256 and 0 < meta["heldout_mse"] < 1
    assert 1 <= meta["heldout_codes_used"] <= 16 and 1 <= meta["heldout_perplexity"] <= 16
    assert meta["num_train"] == 150 and meta["num_heldout"] == 50


def test_a_corrupt_cached_tokenizer_is_quarantined_and_trained_again(
    images: torch.Tensor, cached, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "cache" / "tokenizers" / cached[1].name
    path.parent.mkdir(parents=True)
    path.write_bytes(cached[1].read_bytes()[:100])
    again = cached_tokenizer(VQConfig(**TINY), images[:150], images[150:], num_threads=1)
    assert again.weights_sha256 == cached[0].weights_sha256  # trained again, deterministically
    assert vq_store.load_tokenizer(path).weights_sha256 == again.weights_sha256  # and cached again
    (moved,) = (tmp_path / "cache" / "quarantine" / "tokenizers").iterdir()
    assert moved.name.startswith(path.name) and moved.read_bytes() == cached[1].read_bytes()[:100]
    assert str(path) in capsys.readouterr().err


def test_tampered_weights_are_detected(cached, tmp_path: Path) -> None:
    state = torch.load(cached[1], weights_only=True)
    state["state_dict"]["codebook.embedding"] += 1
    torch.save(state, tmp_path / "tampered.pt")
    with pytest.raises(TokenizerCacheError, match="sha256"):
        vq_store.load_tokenizer(tmp_path / "tampered.pt")
    with pytest.raises(TokenizerCacheError, match="expected"):
        vq_store.load_tokenizer(cached[1], expected=VQConfig(**{**TINY, "seed": 1}))


def test_unknown_config_key_is_named() -> None:
    with pytest.raises(ValueError, match="codebooksize"):
        VQConfig.from_dict({"codebooksize": 8})
    with pytest.raises(ValueError, match="power of two"):
        VQConfig(grid=5)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(vq._INTEGER_RANGES)), st.integers(-(2**40), 2**40), st.booleans())
def test_each_integer_setting_is_refused_outside_its_range_by_name(name, value, as_bool) -> None:
    """Inside its range a value is taken (grid and image_size kept a power of two apart), outside
    it, or a boolean, it is refused naming the setting and the value."""
    low, high = vq._INTEGER_RANGES[name]
    if low <= value <= high and name in ("image_size", "grid"):
        value = max(low, 2 ** (value.bit_length() - 1))  # a power of two in the range
    others = {"image_size": {"grid": 1}, "grid": {"image_size": 1024}}  # the ratio a power of two >= 2
    base = others.get(name, {"image_size": 64, "grid": 8})
    given_value = True if as_bool else value
    if low <= value <= high and not as_bool:
        assert getattr(VQConfig.from_dict({**base, name: value}), name) == value
    else:
        with pytest.raises(ValueError, match=rf"tokenizer\.{name}: {given_value}"):
            VQConfig.from_dict({**base, name: given_value})


def test_context_entropy_sees_dependence() -> None:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 4, (4000, 4, 4), generator=g)
    copied = noise[:, :1].expand(-1, 4, -1).clone()  # each token equals its top neighbour
    independent = context_entropy(noise[:3000], noise[3000:], 4)
    dependent = context_entropy(copied[:3000], copied[3000:], 4)
    assert independent["marginal_bits"] == pytest.approx(2.0, abs=0.01)
    assert independent["heldout_conditional_bits"] == pytest.approx(2.0, abs=0.05)
    assert dependent["conditional_bits"] == pytest.approx(0.0, abs=1e-9)
    assert dependent["top_bits"] == pytest.approx(0.0, abs=1e-9)
    assert dependent["heldout_top_bits"] < 0.1 and dependent["heldout_conditional_bits"] < 0.1
    assert dependent["heldout_left_bits"] == pytest.approx(2.0, abs=0.05)  # columns are independent


def test_animals_dataset_caches_tokens(monkeypatch, tmp_path) -> None:
    train = animals("train", tokenizer=TINY)
    held = animals("heldout", tokenizer=TINY)
    assert train.tokens.shape == (8716, 49) and held.tokens.shape == (1000, 49)
    assert train.num_classes == 10 and train.vocab_size == 16 and train.grid == (7, 7)
    assert train.tokens.dtype == torch.long and int(train.tokens.max()) < 16
    assert train.labels.shape == (8716,) and train.seq_len == 49
    monkeypatch.setattr(VQTokenizer, "encode", lambda *a: pytest.fail("tokens were not cached"))
    torch.testing.assert_close(animals("heldout", tokenizer=TINY).tokens, held.tokens)
    assert len(list((tmp_path / "cache" / "datasets").glob("animals-*.pt"))) == 2
    assert animal_tokenizer(tokenizer=TINY).weights_sha256 == train.tokenizer.weights_sha256
    with pytest.raises(ValueError, match="heldout"):
        animals("validation", tokenizer=TINY)
