"""Samples on disk: atomic save / load round trips and folder names that encode every setting."""

from __future__ import annotations

import os
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.evaluation.protocol import Protocol
from harness.evaluation.samples import (
    MAX_NAME,
    SAMPLES_FILE,
    load_samples,
    sample_dir_name,
    save_samples,
    verify_samples,
)
from harness.evaluation.uncertainty import bootstrap_interval, t_interval

values = st.one_of(
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.lists(st.integers(0, 9), max_size=3),
)
settings_dicts = st.dictionaries(st.text(min_size=1, max_size=15), values, min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(settings_dicts)
def test_sample_dir_name_is_filesystem_safe_bounded_and_order_independent(config: dict) -> None:
    name = sample_dir_name(config)
    assert re.fullmatch(r"[A-Za-z0-9_.=,+-]+", name) and not name.startswith(".")
    assert len(name) <= MAX_NAME
    assert sample_dir_name(dict(reversed(list(config.items())))) == name


@settings(max_examples=200, deadline=None)
@given(settings_dicts, settings_dicts)
def test_different_settings_get_different_folders(a: dict, b: dict) -> None:
    if a != b:
        assert sample_dir_name(a) != sample_dir_name(b)


def test_sample_dir_name_is_readable_for_plain_settings() -> None:
    name = sample_dir_name({"sampler": "maskgit", "num_steps": 8, "temperature": 1.0, "cfg_scale": 0})
    assert name == "cfg_scale=0,num_steps=8,sampler=maskgit,temperature=1.0"
    long = sample_dir_name({f"setting_{i}": i for i in range(30)})
    assert len(long) <= MAX_NAME and "_sha" in long
    with pytest.raises(ValueError):
        sample_dir_name({})


def test_save_and_load_round_trip_and_uint8_images_are_scaled(tmp_path) -> None:
    tokens = torch.randint(0, 17, (5, 64))
    images = torch.rand(5, 1, 8, 8)
    labels = torch.arange(5)
    path = save_samples(tmp_path / "run", tokens, images, labels, {"sample_seed": 3, "num_steps": 8})
    assert path == tmp_path / "run" / SAMPLES_FILE
    # no temporary file left behind; the checksum beside the samples
    assert sorted(p.name for p in path.parent.iterdir()) == [SAMPLES_FILE, f"{SAMPLES_FILE}.sha256"]
    loaded = load_samples(tmp_path / "run")
    assert torch.equal(loaded.tokens, tokens) and torch.equal(loaded.images, images)
    assert torch.equal(loaded.labels, labels) and loaded.meta == {"sample_seed": 3, "num_steps": 8}
    u8 = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    save_samples(tmp_path / "u8.npz", tokens, u8)
    again = load_samples(tmp_path / "u8.npz")
    assert again.labels is None and torch.allclose(again.images, u8.float() / 255)


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path, monkeypatch) -> None:
    tokens, images = torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 1, 2, 2)
    save_samples(tmp_path, tokens, images, meta={"v": 1})

    def broken_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_samples(tmp_path, tokens, images, meta={"v": 2})
    monkeypatch.undo()
    assert load_samples(tmp_path).meta == {"v": 1}
    # the old checksum went first (it must never describe a new file); the old file still verifies
    assert sorted(p.name for p in tmp_path.iterdir()) == [SAMPLES_FILE] and verify_samples(tmp_path) is None


def test_mismatched_lengths_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="same N"):
        save_samples(tmp_path, torch.zeros(3, 4), torch.zeros(2, 1, 2, 2))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=20))
def test_t_interval_contains_the_mean(values: list[float]) -> None:
    mean, low, high = t_interval(values)
    assert low <= mean + 1e-9 and mean - 1e-9 <= high


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=40), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_t_interval_is_the_student_t_interval(values: list[float], level: float) -> None:
    import statistics

    import scipy.stats

    mean, low, high = t_interval(values, level)
    half = (
        scipy.stats.t.ppf(0.5 + level / 2, df=len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    )
    assert mean == pytest.approx(statistics.fmean(values), abs=1e-9)
    assert (low, high) == pytest.approx((mean - half, mean + half), rel=1e-9, abs=1e-9)


def test_t_interval_of_one_value_has_no_interval_and_bootstrap_is_seeded() -> None:
    assert t_interval([2.5]) == (2.5, None, None)
    data = torch.arange(50.0)
    stat = lambda idx: float(data[idx].mean())
    assert bootstrap_interval(stat, 50, 30, seed=1) == bootstrap_interval(stat, 50, 30, seed=1)
    low, high, per_set = bootstrap_interval(stat, 50, 200, seed=2)
    assert low < 24.5 < high and len(per_set) == 200


def test_protocol_key_ignores_seeds_and_uncertainty_but_nothing_else() -> None:
    base = Protocol(
        "fid", "digits-cnn", "ab" * 32, "digits/train", "cd" * 32, 1500, 100, "native", "f32", "lib"
    )
    same = Protocol(**{**base.__dict__, "sample_seeds": (1, 2), "uncertainty": "student-t"})
    assert same.protocol_key() == base.protocol_key()
    for field, value in [("num_samples", 101), ("extractor_sha256", "ef" * 32), ("resize_rule", "bicubic"),
                         ("reference_sha256", "00" * 32), ("options", (("eps", 1e-6),))]:  # fmt: skip
        assert Protocol(**{**base.__dict__, field: value}).protocol_key() != base.protocol_key()
    assert base.protocol_key().startswith("fid/digits-cnn/digits-train/N100/")
