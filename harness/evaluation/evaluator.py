"""The Evaluator: samples -> features -> statistics -> metrics, each value with its protocol.

    evaluator = Evaluator("digits")                       # digits/train, digits-cnn, default metrics
    results = evaluator.evaluate(images, sample_seed=0)   # images (N, 1, 8, 8) in [0, 1]

The reference statistics are cached on disk (see reference.py); the extractor is built once
per Evaluator (a domain extractor is trained on first use and cached).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torch import Tensor

from harness.errors import UserError, check_known
from harness.evaluation.extractors import (
    INPUT_KINDS,
    FeatureExtractor,
    Features,
    build_extractor,
    default_extractor_name,
    extract_features,
)
from harness.evaluation.metrics import LABELS, LOGITS, MASKS, METRICS, Metric, metrics_for
from harness.evaluation.protocol import MetricResult, Protocol
from harness.evaluation.reference import ReferenceSet, ReferenceStats, dataset_reference, reference_stats
from harness.evaluation.samples import SampleSet, load_samples, samples_file
from harness.evaluation.uncertainty import bootstrap_interval, t_interval

DTYPE = "features float32; statistics float64"


def default_metrics(extractor: FeatureExtractor) -> list[str]:
    """Every registered metric that applies to this extractor (IS only when it has logits; not
    those that need the samples' conditions, which only conditional samples have)."""
    return metrics_for(extractor.input_kind, extractor.num_logits is not None)


def _check_metric(metric: Metric, extractor: FeatureExtractor) -> Metric:
    if metric.needs == MASKS:
        raise UserError(f"{metric.key} scores segmentation masks; use segmentation.miou_result")
    if extractor.input_kind not in metric.kinds:
        raise UserError(
            f"{metric.key} applies to {metric.kinds} inputs; {extractor.name} takes {extractor.input_kind}s"
        )
    if metric.needs in (LOGITS, LABELS) and extractor.num_logits is None:
        raise UserError(
            f"{metric.key} needs class logits, which {extractor.name} lacks (try inception-v3-compat)"
        )
    return metric


class Evaluator:
    """Scores samples against one reference set with one extractor and a list of metrics.

    reference: a dataset name (its ``split`` under ``data_options``, optionally a seeded subset of
    ``num_reference``)
    or a ReferenceSet; extractor: a registry name, an instance, or None for the dataset's
    default; metrics: metric keys (default: all that apply); weights_path: passed to the
    extractor; cache_dir: default ``$UNMASK_CACHE`` or ``<repo>/.cache/unmask``.
    """

    def __init__(
        self,
        reference: str | ReferenceSet,
        *,
        split: str = "train",
        extractor: str | FeatureExtractor | None = None,
        metrics: Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        weights_path: str | Path | None = None,
        num_reference: int | None = None,
        data_options: dict | None = None,
        batch_size: int = 64,
    ) -> None:
        for name in metrics or ():
            check_known(name, METRICS, "metrics")  # before an extractor is built (or trained)
        if isinstance(reference, str):
            reference = dataset_reference(reference, split, num_reference, options=data_options)
        self.reference = reference
        if not isinstance(extractor, FeatureExtractor):
            name = default_extractor_name(reference.dataset, extractor)
            kind = INPUT_KINDS.get(name)
            for metric in (METRICS[m] for m in metrics or ()):  # before it is built (or trained)
                if kind is not None and metric.needs != MASKS and kind not in metric.kinds:
                    raise UserError(f"{metric.key} applies to {metric.kinds} inputs; {name} takes {kind}s")
            extractor = build_extractor(name, weights_path=weights_path, cache_dir=cache_dir)
        self.extractor = extractor
        names = default_metrics(extractor) if metrics is None else list(metrics)
        self.metrics = [_check_metric(METRICS[name], extractor) for name in names]
        self.cache_dir, self.batch_size = cache_dir, batch_size
        self._reference_stats: ReferenceStats | None = None

    @property
    def reference_stats(self) -> ReferenceStats:
        """Reference features, Gaussian and the k-NN radii the metrics read, from the disk cache
        when present."""
        if self._reference_stats is None:
            neighborhoods = {k for metric in self.metrics for k in metric.reference_radii}
            self._reference_stats = reference_stats(
                self.reference, self.extractor, self.cache_dir, self.batch_size, neighborhoods
            )
        return self._reference_stats

    def features(self, samples: Tensor, labels: Tensor | None = None) -> Features:
        """Features of exactly the N given samples (N, C, [T,] H, W) in [0, 1], with the class
        each was conditioned on (N,) when given."""
        if samples.shape[0] < 2:
            raise ValueError(f"need at least 2 samples to score; got {samples.shape[0]}")
        if labels is not None and labels.shape[0] != samples.shape[0]:
            raise ValueError(f"got {labels.shape[0]} labels for {samples.shape[0]} samples")
        features = extract_features(self.extractor, samples, self.batch_size)
        return replace(features, labels=None if labels is None else labels.long().cpu())

    def protocol(self, metric: Metric, num_samples: int, seeds: Sequence[int], uncertainty: str) -> Protocol:
        """The protocol of ``metric`` on num_samples samples against this reference."""
        ref = self.reference_stats
        options = metric.options(num_samples, ref.num)
        if metric.extractor_options is not None:
            options = {**options, **metric.extractor_options(self.extractor)}
        return Protocol(
            metric=metric.key,
            extractor=self.extractor.name,
            extractor_sha256=self.extractor.weights_sha256,
            reference=self.reference.name,
            reference_sha256=self.reference.sha256,
            num_reference=ref.num,
            num_samples=num_samples,
            resize_rule=self.extractor.resize_rule,
            dtype=DTYPE,
            library=metric.library,
            options=tuple(sorted(options.items())),
            sample_seeds=tuple(seeds),
            uncertainty=uncertainty,
        )

    def evaluate(
        self,
        samples: Tensor,
        sample_seed: int,
        *,
        bootstrap: int = 0,
        bootstrap_seed: int = 0,
        labels: Tensor | None = None,
    ) -> list[MetricResult]:
        """Every metric on one sample set; with bootstrap = B > 1 each also gets a 95% percentile interval.
        labels (N,): the class each sample was conditioned on (caption agreement needs them).

        The value is always the full-set value. See uncertainty.py for why the bootstrap interval
        of FID-like set metrics is shifted; ``evaluate_seeds`` is the sounder interval for them.
        """
        generated, ref = self.features(samples, labels), self.reference_stats
        # Stages several metrics read (precision and recall: one k-NN pass) run once per sample
        # set: once for the full set, once per bootstrap resample.
        passes: dict = {}
        resample_passes: dict[bytes, dict] = {}
        results = []
        for metric in self.metrics:
            options = metric.options(len(generated), ref.num)
            value = metric(generated, ref, options, passes=passes)
            uncertainty, low, high, per_set = "none", None, None, ()
            if bootstrap:
                low, high, per_set = bootstrap_interval(
                    lambda idx, m=metric, o=options: m(
                        generated.select(idx), ref, o, passes=resample_passes.setdefault(_digest(idx), {})
                    ),
                    len(generated),
                    bootstrap,
                    bootstrap_seed,
                )
                uncertainty = f"bootstrap B={bootstrap} seed={bootstrap_seed} percentile 95%"
            protocol = self.protocol(metric, len(generated), (sample_seed,), uncertainty)
            results.append(
                MetricResult(metric.key, value, metric.higher_is_better, protocol, low, high, per_set)
            )
        return results

    def evaluate_seeds(
        self,
        sample_sets: Sequence[Tensor],
        sample_seeds: Sequence[int],
        labels: Sequence[Tensor | None] | None = None,
    ) -> list[MetricResult]:
        """Each metric's mean over k sample sets (one per seed) with a Student-t 95% interval;
        labels: each set's conditioning classes (or None)."""
        if len(sample_sets) != len(sample_seeds) or not sample_sets:
            raise ValueError("give one sample seed per sample set, and at least one set")
        if len({s.shape[0] for s in sample_sets}) != 1:
            raise ValueError("every sample set must have the same N (N is part of the protocol)")
        labels = [None] * len(sample_sets) if labels is None else labels
        per_set = [
            self.evaluate(samples, seed, labels=y)
            for samples, seed, y in zip(sample_sets, sample_seeds, labels, strict=True)
        ]
        results = []
        for i, metric in enumerate(self.metrics):
            values = tuple(run[i].value for run in per_set)
            mean, low, high = t_interval(values)
            uncertainty = f"student-t 95% over {len(values)} sample sets"
            protocol = self.protocol(metric, sample_sets[0].shape[0], tuple(sample_seeds), uncertainty)
            results.append(
                MetricResult(metric.key, mean, metric.higher_is_better, protocol, low, high, values)
            )
        return results

    def score_sample_dir(self, path: str | Path, *, bootstrap: int = 0) -> list[MetricResult]:
        """Score samples saved by ``save_samples``; their meta must record ``sample_seed``."""
        samples = checked_samples(path)
        seed = int(samples.meta["sample_seed"])
        return self.evaluate(samples.images, seed, bootstrap=bootstrap, labels=samples.labels)


def _digest(index: Tensor) -> bytes:
    """A short name of a bootstrap resample (its indices), to find its shared stages."""
    return hashlib.sha256(index.numpy().tobytes()).digest()


def checked_samples(path: str | Path, like: Tensor | None = None) -> SampleSet:
    """Saved samples that can be scored, else UserError naming the file: readable, at least two,
    finite, with their sample seed, and (given ``like``, a real image of the reference) of its
    shape. Checked before any extractor is built or trained."""
    samples, file = load_samples(path), samples_file(path)
    if "sample_seed" not in samples.meta:
        raise UserError(f"{file}: the samples' meta has no 'sample_seed'; it is part of the protocol")
    if len(samples.images) < 2:
        raise UserError(f"{file}: {len(samples.images)} sample(s); scoring needs at least 2 samples")
    bad = int((~samples.images.isfinite()).sum())
    if bad:
        raise UserError(f"{file}: {bad} of {samples.images.numel()} image values are NaN or infinite")
    if like is not None and tuple(samples.images.shape[1:]) != tuple(like.shape):
        raise UserError(
            f"{file}: images of shape {tuple(samples.images.shape)}; the reference data's images are "
            f"{tuple(like.shape)} each"
        )
    return samples
