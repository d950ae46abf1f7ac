"""The embedded benchmark's parts: baselines, real-image references, baseline trial identity."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config.study import expand_grid, load_study
from harness.data.registry import load_dataset, real_images
from harness.data.sources.animals import animal_split
from harness.data.tokenizers.pixel import PixelTokenizer
from harness.data.types import TokenDataset
from harness.evaluation import dataset_reference, default_extractor_name
from harness.generation.baselines import class_marginals, heldout_tokens

REPO = Path(__file__).resolve().parents[1]


def _dataset(labels: list[int], seq_len: int = 3, vocab: int = 1000) -> TokenDataset:
    """Row i's tokens are (i, i, ..., i): a sample's tokens say which row it came from."""
    n = len(labels)
    tokens = torch.arange(n)[:, None].expand(n, seq_len).clone()
    return TokenDataset(
        "toy", "heldout", tokens, torch.tensor(labels), 1 + max(labels), PixelTokenizer(vocab, (1, seq_len))
    )


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    num_samples=st.integers(2, 40),
    seed=st.integers(0, 10),
)
def test_heldout_tokens_uses_every_image_before_repeating_one(counts, num_samples, seed) -> None:
    labels = [c for c, k in enumerate(counts) for _ in range(k)]
    heldout = _dataset(labels)
    out = heldout_tokens(heldout, heldout, num_samples, seed)
    rows = out.tokens[:, 0]
    assert torch.equal(out.tokens, rows[:, None].expand_as(out.tokens))
    assert torch.equal(heldout.labels[rows], out.labels)  # each sample is an image of its label
    for c in range(len(counts)):
        used = torch.bincount(rows[out.labels == c], minlength=len(labels))[heldout.labels == c]
        assert int(used.max()) - int(used.min()) <= 1  # spread evenly: no image twice before all once
    again = heldout_tokens(heldout, heldout, num_samples, seed)
    assert torch.equal(again.tokens, out.tokens)


def test_heldout_tokens_takes_training_images_of_a_class_the_heldout_split_lacks() -> None:
    heldout = _dataset([0, 0, 2])  # class 1 has no held-out image
    train = TokenDataset(
        "toy",
        "train",
        torch.tensor([[7] * 3, [8] * 3, [9] * 3]),
        torch.tensor([1, 0, 1]),
        3,
        heldout.tokenizer,
    )
    out = heldout_tokens(train, heldout, 9, seed=0)
    assert set(out.tokens[out.labels == 1, 0].tolist()) == {7, 9}  # class 1: its training images
    assert set(out.tokens[out.labels == 0, 0].tolist()) == {0, 1}  # the others: held-out only
    assert set(out.tokens[out.labels == 2, 0].tolist()) == {2}
    empty = TokenDataset("toy", "train", torch.tensor([[7] * 3]), torch.tensor([0]), 3, heldout.tokenizer)
    with pytest.raises(ValueError, match="class 1 has no image"):
        heldout_tokens(empty, heldout, 9, seed=0)


def test_class_marginals_follows_per_class_position_frequencies() -> None:
    g = torch.Generator().manual_seed(0)
    V, L, C = 4, 3, 2
    probs = torch.rand(C, L, V, generator=g) ** 3
    probs /= probs.sum(-1, keepdim=True)
    labels = torch.arange(4000) % C
    tokens = torch.multinomial(probs[labels].reshape(-1, V), 1, generator=g).reshape(-1, L)
    train = TokenDataset("toy", "train", tokens, labels, C, PixelTokenizer(V, (1, L)))
    out = class_marginals(train, train, 20000, seed=1)
    for c in range(C):
        sampled = out.tokens[out.labels == c]  # (n, L)
        freq = torch.stack([torch.bincount(sampled[:, i], minlength=V) for i in range(L)]).float()
        freq /= freq.sum(-1, keepdim=True)
        empirical = torch.stack([torch.bincount(tokens[labels == c][:, i], minlength=V) for i in range(L)])
        empirical = (empirical + 1).float() / (empirical + 1).sum(-1, keepdim=True)  # add-one smoothed
        torch.testing.assert_close(freq, empirical, atol=0.02, rtol=0)
    # independence across positions: the joint of positions 0 and 1 factorises within a class
    first = out.tokens[out.labels == 0]
    joint = torch.bincount(first[:, 0] * V + first[:, 1], minlength=V * V).float().reshape(V, V)
    joint /= joint.sum()
    torch.testing.assert_close(
        joint, joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True), atol=0.02, rtol=0
    )


def test_animals_reference_is_the_real_images_not_their_tokens() -> None:
    x, labels = real_images("animals", "heldout")
    expected, expected_labels = animal_split("heldout")
    assert torch.equal(x, expected) and torch.equal(labels, expected_labels)
    assert x.shape == (1000, 1, 28, 28) and len(torch.unique(x)) > 17  # grey levels, not decoded codes
    reference = dataset_reference("animals", "heldout", num=50)
    assert reference.dataset == "animals" and reference.data.shape == (50, 1, 28, 28)
    assert default_extractor_name("animals") == "animals-cnn"


def test_digits_reference_is_its_pixels() -> None:
    x, labels = real_images("digits", "train")
    data = load_dataset("digits", "train")
    assert torch.equal(x, data.images()) and torch.equal(labels, data.labels)


def test_baseline_trials_ignore_model_train_and_sampler_options() -> None:
    spec = load_study(REPO / "search_spaces" / "benchmark_check.yaml")
    trials = expand_grid(spec)
    by_sampler: dict[str, int] = {}
    for t in trials:
        by_sampler[t.sampler.name] = by_sampler.get(t.sampler.name, 0) + 1
    assert by_sampler == {"euler": 5, "maskgit": 5, "class_marginals": 1, "heldout_tokens": 1}
    assert len({t.training_hash() for t in trials if not t.sampler.is_baseline}) == 1
    baseline = next(t for t in trials if t.sampler.name == "class_marginals")
    other = baseline.model_copy(update={"model": baseline.model.model_copy(update={"timestep": "explicit"})})
    assert other.trial_hash() == baseline.trial_hash()
    changed = baseline.model_copy(update={"seed": 1})
    assert (
        changed.trial_hash() != baseline.trial_hash() and changed.training_hash() != baseline.training_hash()
    )
    model = next(t for t in trials if t.sampler.name == "euler")
    other = model.model_copy(update={"model": model.model.model_copy(update={"timestep": "explicit"})})
    assert other.trial_hash() != model.trial_hash()


@pytest.mark.parametrize("split", ["validation", "test"])
def test_unknown_split_names_the_field(split) -> None:
    with pytest.raises(ValueError, match="data.split"):
        real_images("animals", split)


def _digits_trial(**eval_fields):
    from harness.config.trial import TrialConfig

    return TrialConfig.model_validate({"eval": {"num_samples": 20, "metrics": ["fid"], **eval_fields}})


def test_extra_protocol_scores_the_same_samples_with_a_second_extractor(tmp_path, warm_eval_cache) -> None:
    from harness.evaluation import save_samples
    from harness.run.trial import evaluate_trial

    heldout = load_dataset("digits", "heldout")
    tokens, labels = heldout.tokens[:20], heldout.labels[:20]
    save_samples(tmp_path / "s", tokens, heldout.tokenizer.decode(tokens), labels, _meta())
    extra = {"extractor": "inception", "metrics": ["fid"], "num_samples": 6, "num_reference": 8}
    trial = _digits_trial(extra_protocols=[extra])
    metrics, _, protocols = evaluate_trial(trial, [tmp_path / "s"], warm_eval_cache)
    assert {"fid", "inception/fid"} <= set(metrics)
    main, second = protocols["fid"], protocols["inception/fid"]
    assert (main["extractor"], main["num_samples"]) == ("digits-cnn", 20)
    assert (second["extractor"], second["num_samples"], second["num_reference"]) == ("inception", 6, 8)
    assert main["key"] != second["key"] and metrics["inception/fid"] > 0


def test_extra_protocol_errors_name_the_field_before_any_work(warm_eval_cache) -> None:
    from pydantic import ValidationError

    from harness.run.trial import trial_evaluators

    with pytest.raises(ValidationError, match="inceptoin"):
        _digits_trial(extra_protocols=[{"extractor": "inceptoin"}])
    with pytest.raises(ValueError, match="fvd applies to"):
        trial_evaluators(
            _digits_trial(extra_protocols=[{"extractor": "digits-cnn", "metrics": ["fvd"]}]), None
        )


def _meta() -> dict:
    return {"sample_seed": 0, "nfe": 0, "nfe_unbatched": 0, "seconds_per_sample": 0.0}


def test_bad_data_options_fail_validation_naming_the_key() -> None:
    from harness.config.trial import ConfigError, build_trial

    with pytest.raises(ConfigError, match="gird"):
        build_trial({"data": {"name": "animals", "options": {"tokenizer": {"gird": 14}}}})
    with pytest.raises(ConfigError, match="sead"):
        build_trial({"data": {"name": "digits", "options": {"sead": 1}}})


def test_planning_an_animals_study_trains_and_loads_nothing(tmp_path, monkeypatch) -> None:
    from harness.data import registry
    from harness.data.tokenizers import vq_store
    from harness.run.plan import make_plan
    from harness.run.store import CheckpointStore

    monkeypatch.setattr(vq_store, "train_vqvae", lambda *a: pytest.fail("planning trained a tokenizer"))
    animals = registry.DATASETS["animals"]
    monkeypatch.setitem(
        registry.DATASETS,
        "animals",
        replace(animals, load=lambda *a, **k: pytest.fail("planning loaded data")),
    )
    spec = load_study(REPO / "search_spaces" / "benchmark_check.yaml")
    coarse = make_plan(spec, tmp_path / "s", CheckpointStore(tmp_path / "c"))
    fine_spec = spec.model_copy(
        update={"overrides": {**spec.overrides, "data.options": {"tokenizer": {"grid": 14}}}}
    )
    fine = make_plan(fine_spec, tmp_path / "s", CheckpointStore(tmp_path / "c"))
    assert len(coarse.trainings) == len(fine.trainings) == 1
    assert fine.train_flops > 3.5 * coarse.train_flops  # 196 tokens instead of 49 per image


class _LearnedTokenizer:
    """The digits pixels behind a tokenizer that carries a learned tokenizer's metadata."""

    def __init__(self, inner, metadata: dict) -> None:
        self.inner, self.metadata = inner, metadata
        self.vocab_size, self.grid = inner.vocab_size, inner.grid

    def encode(self, images):
        return self.inner.encode(images)

    def decode(self, tokens):
        return self.inner.decode(tokens).flip(-1)  # a lossy "reconstruction": mirrored digits


def test_data_summary_and_report_show_the_tokenizer_floor(tmp_path, warm_eval_cache, monkeypatch) -> None:
    from dataclasses import replace

    from harness.config.trial import TrialConfig
    from harness.data import registry
    from harness.runner import warm_datasets
    from reports.markdown import write_markdown_report

    plain = TrialConfig()
    (summary,) = warm_datasets([plain, plain], tmp_path, warm_eval_cache)
    assert (summary["name"], summary["num_train"], summary["num_heldout"]) == ("digits", 1500, 297)
    assert summary["grid"] == [8, 8] and "tokenizer" not in summary

    original = registry.DATASETS["digits"]

    def learned(split="train", **options):
        data = original.load(split, **options)
        return replace(data, tokenizer=_LearnedTokenizer(data.tokenizer, {"heldout_mse": 0.25}))

    monkeypatch.setitem(registry.DATASETS, "digits", replace(original, load=learned))
    (tmp_path / "datasets.json").unlink()  # measured anew (a resumed study reuses the file)
    (summary,) = warm_datasets([plain], tmp_path, warm_eval_cache)
    tok = summary["tokenizer"]
    assert tok["heldout_mse"] == 0.25
    assert tok["reconstruction_fid"] > 2 * tok["heldout_real_fid"]  # mirrored digits are far worse
    report = write_markdown_report(tmp_path, "t", "fid", "min").read_text()
    assert "## Data" in report and "recon. FID" in report and "0.25" in report
    monkeypatch.setattr(
        "harness.evaluation.Evaluator.evaluate", lambda *a, **k: pytest.fail("floors measured twice")
    )
    assert warm_datasets([plain], tmp_path, warm_eval_cache) == [summary]


def test_the_reference_follows_the_data_options_split() -> None:
    default = dataset_reference("digits", "heldout")
    other = dataset_reference("digits", "heldout", options={"seed": 1})
    assert default.data.shape == other.data.shape and default.sha256 != other.sha256
    x, _ = real_images("digits", "heldout", seed=1)
    assert torch.equal(x, other.data)
