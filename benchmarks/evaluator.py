"""Evaluator throughput on CPU: feature extraction (images/s) and a cold vs warm reference cache.

    .venv/bin/python benchmarks/evaluator.py [--threads 2] [--inception-images 16] [--animals-only]

Feature extraction is timed for the domain extractor (digits-cnn) and the shipped FID
Inception-v3. The cache benchmark times one evaluation with an empty reference-statistics cache
(cold: the reference features are extracted) and one with it filled (warm: they are loaded),
both in total and for the reference stage alone. At 2048 dimensions the FID's matrix square
root (scipy sqrtm, O(D^3)) costs seconds in both, which caps the total ratio for Inception.

The last row is the animals evaluation (FID, precision, recall, IS; animals-cnn, reference
animals/train, the real held-out images as samples): median seconds over ``--animals-repeats``
repetitions with an empty reference cache (a fresh folder each time: features, Gaussian and
k-NN radii computed) and with a filled one (all three loaded), interleaved in one run, and
their ratio warm / cold. The extractor is built once, outside the timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness.data.registry import load_dataset
from harness.evaluation import (
    FID,
    IS,
    PRECISION,
    RECALL,
    Evaluator,
    FeatureExtractor,
    ReferenceSet,
    build_extractor,
    dataset_reference,
)
from harness.evaluation import extract_features as run_extractor


def images_per_second(
    extractor: FeatureExtractor, images: torch.Tensor, batch_size: int, repeats: int
) -> float:
    """Best-of-``repeats`` throughput of extract_features, after one warm-up batch."""
    run_extractor(extractor, images[:batch_size], batch_size)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_extractor(extractor, images, batch_size)
        best = min(best, time.perf_counter() - start)
    return images.shape[0] / best


def cold_and_warm(
    extractor: FeatureExtractor, reference: ReferenceSet, samples: torch.Tensor, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` seconds for one FID evaluation and for its reference stage alone,
    with an empty (cold) and then a filled (warm) reference-statistics cache."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            for state in ("cold", "warm"):
                start = time.perf_counter()
                evaluator = Evaluator(reference, extractor=extractor, metrics=[FID], cache_dir=cache)
                evaluator.reference_stats  # noqa: B018  (the stage the cache serves)
                reference_done = time.perf_counter()
                evaluator.evaluate(samples, sample_seed=0)
                done = time.perf_counter()
                for key, seconds in ((f"{state} reference", reference_done - start), (state, done - start)):
                    best[key] = min(best.get(key, float("inf")), seconds)
    return best


ANIMALS_METRICS = [FID, PRECISION, RECALL, IS]


def cached_over_empty(
    extractor: FeatureExtractor, reference: ReferenceSet, samples: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median seconds of one evaluation of ANIMALS_METRICS (Evaluator built, reference statistics,
    samples scored) with an empty cache folder (a new one each repetition) and with a filled one."""

    def seconds(cache: Path) -> float:
        start = time.perf_counter()
        Evaluator(reference, extractor=extractor, metrics=ANIMALS_METRICS, cache_dir=cache).evaluate(
            samples, sample_seed=0
        )
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as root:
        filled = Path(root) / "filled"
        seconds(filled)  # fills it
        cold, warm = [], []
        for i in range(repeats):  # interleaved, so that a busy machine slows both alike
            cold.append(seconds(Path(root) / f"empty-{i}"))
            warm.append(seconds(filled))
    return statistics.median(cold), statistics.median(warm)


def digits_and_inception(args: argparse.Namespace) -> None:
    """Feature throughput and cold/warm reference stage: digits-cnn and the shipped Inception-v3."""
    train, heldout = load_dataset("digits", "train").images(), load_dataset("digits", "heldout").images()
    start = time.perf_counter()
    digits_cnn = build_extractor("digits-cnn")
    print(f"digits-cnn ready in {time.perf_counter() - start:.1f} s (trained or loaded from the cache)")
    print(f"digits-cnn held-out accuracy {digits_cnn.heldout_accuracy:.4f}; torch threads {args.threads}")
    inception = build_extractor("inception")

    rate = images_per_second(digits_cnn, train, batch_size=64, repeats=5)
    print(f"features  digits-cnn (8x8 -> 64-d):        {rate:10.1f} images/s")
    rate = images_per_second(inception, heldout[: args.inception_images], batch_size=8, repeats=1)
    print(f"features  inception (299x299 -> 2048-d):   {rate:10.1f} images/s")

    inception_reference = ReferenceSet("digits/train-sub", "digits", train[: args.inception_reference])
    cases = [(digits_cnn, ReferenceSet("digits/train", "digits", train), heldout, 3)]
    cases.append((inception, inception_reference, heldout[:8], 1))
    for extractor, reference, samples, repeats in cases:
        t = cold_and_warm(extractor, reference, samples, repeats)
        print(f"evaluate  {extractor.name} (reference N={len(reference)}, samples N={len(samples)})")
        for label, cold, warm in [
            ("whole evaluation", t["cold"], t["warm"]),
            ("reference stage", t["cold reference"], t["warm reference"]),
        ]:
            print(f"  {label:<18} cold {cold:8.3f} s  warm {warm:8.3f} s  cold/warm {cold / warm:8.1f}x")


def animals_row(args: argparse.Namespace) -> None:
    """The cached / empty ratio of a whole animals evaluation (animals-cnn trains on first use)."""
    animals_cnn, animals = build_extractor("animals-cnn"), dataset_reference("animals", "train")
    samples = dataset_reference("animals", "heldout").data  # real held-out images: no tokenizer to train
    cold, warm = cached_over_empty(animals_cnn, animals, samples, args.animals_repeats)
    print(
        "evaluation with cached reference statistics / empty cache (animals: FID, precision, recall, IS): "
        f"{warm / cold:.3f}  (goal <= 0.2; warm {warm:.3f} s / cold {cold:.3f} s, "
        f"medians of {args.animals_repeats}; "
        f"reference N={len(animals)}, samples N={len(samples)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--inception-images", type=int, default=16)
    parser.add_argument("--inception-reference", type=int, default=48)
    parser.add_argument("--animals-repeats", type=int, default=5)
    parser.add_argument("--animals-only", action="store_true", help="print only the animals row")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.animals_only:
        digits_and_inception(args)
    animals_row(args)


if __name__ == "__main__":
    main()
