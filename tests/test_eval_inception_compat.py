"""torch-fidelity's Inception-v3 from a local weights file (built here with random weights)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from harness.evaluation import IS, Evaluator, ReferenceSet, build_extractor, extract_features


@pytest.fixture(autouse=True)
def _cache_in_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state dict in torch-fidelity's format, from its own class with random init (no download)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfi, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *args, **kwargs: None)
        torch.manual_seed(0)
        model = tfi.FeatureExtractorInceptionV3("random", ["2048"])
    path = tmp_path_factory.mktemp("fidelity") / "weights-inception-random.pth"
    torch.save(model.state_dict(), path)
    return path


def test_compat_extractor_loads_the_named_file_and_gives_pool_features_and_1008_logits(
    random_weights,
) -> None:
    extractor = build_extractor("inception-v3-compat", weights_path=random_weights)
    saved = torch.load(random_weights, weights_only=True)
    assert all(torch.equal(extractor.net.state_dict()[k], v) for k, v in saved.items())
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    features = extract_features(extractor, images)
    assert features.features.shape == (2, 2048) and features.logits.shape == (2, 1008)
    assert torch.isfinite(features.features).all() and torch.isfinite(features.logits).all()
    reference = ReferenceSet("tiny", "digits", torch.rand(3, 1, 8, 8))
    assert [m.key for m in Evaluator(reference, extractor=extractor, metrics=[IS]).metrics] == [IS]


def test_compat_weights_must_be_a_plain_state_dict(tmp_path) -> None:
    not_tensors = tmp_path / "strings.pth"
    torch.save({"fc.weight": "not a tensor"}, not_tensors)
    with pytest.raises(ValueError, match="state dict of tensors"):
        build_extractor("inception-v3-compat", weights_path=not_tensors)
    code = tmp_path / "code.pth"
    torch.save({"fc.weight": Path("/")}, code)  # an arbitrary class: refused by weights_only=True
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        build_extractor("inception-v3-compat", weights_path=code)


def test_a_study_finds_the_compat_weights_where_the_extractor_looks_or_is_refused(
    tmp_path, monkeypatch, capsys
) -> None:
    """A study names no weights file: its trials find it at $UNMASK_INCEPTION_WEIGHTS, else the
    default path. When neither holds it, `run` is refused before anything starts (exit 2, naming
    the extractor, the path and the variable), where it used to train and then fail every trial."""
    import run_study
    from harness.config.trial import build_trial
    from harness.evaluation import inception
    from harness.runner import missing_files as missing_weights_files

    monkeypatch.setattr(inception, "COMPAT_DEFAULT", tmp_path / "absent.pth")
    monkeypatch.delenv(inception.COMPAT_ENV, raising=False)
    trials = [build_trial({"eval": {"extractor": "inception-v3-compat", "metrics": ["fid"]}})]
    (line,) = missing_weights_files(trials)
    assert "inception-v3-compat" in line and "absent.pth" in line and inception.COMPAT_ENV in line
    extra = {"extractor": "inception-v3-compat", "num_samples": 10}
    assert len(missing_weights_files([build_trial({"eval": {"extra_protocols": [extra]}})])) == 1
    assert missing_weights_files([build_trial({})]) == []  # digits-cnn: trained, no file
    named = tmp_path / "mine.pth"
    named.write_bytes(b"weights")
    monkeypatch.setenv(inception.COMPAT_ENV, str(named))
    assert missing_weights_files(trials) == [] and inception.compat_weights_path() == named
    monkeypatch.setenv(inception.COMPAT_ENV, str(tmp_path / "typo.pth"))  # named, missing: no fall back
    assert "typo.pth" in missing_weights_files(trials)[0]

    study = tmp_path / "study.yaml"
    study.write_text(
        "name: compat\nbase: " + str(Path(run_study.__file__).parent / "search_spaces" / "small.yaml") + "\n"
        "overrides: {eval.extractor: inception-v3-compat, eval.metrics: [fid]}\n"
        "space: {sampler.temperature: [1.0]}\n"
    )
    assert run_study.main(["run", str(study), "--runs-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "eval extractor 'inception-v3-compat'" in err and "typo.pth" in err
    assert not (tmp_path / "runs").exists()
