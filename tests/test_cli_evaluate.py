"""`run_study.py evaluate`: rescoring samples on disk, no resampling; bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import torch

import run_study
from harness.data.registry import load_dataset
from harness.evaluation import save_samples


def _write(folder: Path, tokens, labels) -> Path:
    images = load_dataset("digits").tokenizer.decode(tokens)
    save_samples(folder, tokens, images, labels, {"sample_seed": 3})
    return folder


def test_evaluate_scores_saved_samples_and_separates_real_from_noise(tmp_path, warm_eval_cache, capsys):
    heldout = load_dataset("digits", "heldout")
    real = _write(tmp_path / "real", heldout.tokens, heldout.labels)
    noise_tokens = torch.randint(0, 17, heldout.tokens.shape, generator=torch.Generator().manual_seed(0))
    noise = _write(tmp_path / "noise", noise_tokens, heldout.labels)
    scores = {}
    for name, folder in (("real", real), ("noise", noise)):
        rc = run_study.main(
            [
                "evaluate",
                str(folder),
                "--dataset",
                "digits",
                "--metrics",
                "fid",
            ]
        )
        assert rc == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line.startswith("fid = ") and "digits-cnn/digits-train/N297" in line
        scores[name] = float(line.split()[2])
    assert scores["real"] < scores["noise"] / 5


def test_evaluate_bad_input_exits_2(tmp_path, capsys):
    assert run_study.main(["evaluate", str(tmp_path / "missing"), "--dataset", "digits"]) == 2
    assert "samples.npz" in capsys.readouterr().err
    assert run_study.main(["evaluate", str(tmp_path), "--dataset", "digitz"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err.lower()
