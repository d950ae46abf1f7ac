"""Metric keys, the metric registry, and each metric as a function of features.

Stages: features (extractors.py) -> statistics (frechet.py, reference.py) -> metric (here).
Every metric declares its key, whether higher is better, what it consumes (features of both
sets, logits of the generated set, or segmentation masks), which extractor kinds it applies to,
who computes it, and its settings, which enter the protocol.

Caption agreement (needs LABELS: a classifier's logits of the generated samples and the class
each was conditioned on) is the fraction of samples whose predicted class is the class of
their condition: for captioned canvases, the scene the domain classifier reads equals the
caption's scene. Its protocol records the classifier's held-out accuracy: the agreement of
real held-out data, the ceiling a perfect generator reaches under this classifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from operator import attrgetter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from harness.errors import UserError
from harness.evaluation.extractors import IMAGE, VIDEO, Features
from harness.evaluation.frechet import DEFAULT_EPS, frechet_distance, gaussian_stats
from harness.evaluation.neighbors import PrecisionRecall, knn_radii, precision_recall
from harness.evaluation.reference import ReferenceStats
from models.registry import Registry

FID = "fid"
FVD = "fvd"
KID = "kid_mean"
IS = "is_mean"
PRECISION = "precision"
RECALL = "recall"
MIOU = "miou"
CAPTION_AGREEMENT = "caption_agreement"

FEATURES, LOGITS, MASKS, LABELS = "features", "logits", "masks", "labels"
UNMASK_LIBRARY = "unmask-evaluation 1"
# From its metadata: importing torch-fidelity (and torchvision) costs seconds that validation
# does not need; the scorers import it when they run.
TORCH_FIDELITY_LIBRARY = f"torch-fidelity {version('torch-fidelity')}"
KID_SUBSETS, KID_SUBSET_SIZE, RNG_SEED = 100, 1000, 2020
PRC_NEIGHBORHOOD, IS_SPLITS = 3, 10

Options = Mapping[str, Any]


@dataclass(frozen=True)
class Metric:
    """key; higher_is_better; needs: FEATURES | LOGITS | MASKS | LABELS; kinds: extractor input
    kinds it applies to; library: who computes it; compute(generated, reference, options) -> float;
    options(n_generated, n_reference) -> the settings used (recorded in the protocol);
    extractor_options(extractor) -> facts of the extractor the protocol records, if any.

    shared: a stage several metrics read (precision and recall: one k-NN pass), run as
    shared(generated, reference, options), whose result compute(result) -> float reads; within
    one ``passes`` dict it runs once per options. reference_radii: the k of the reference k-NN
    radii the metric reads, computed with the reference statistics and cached with them.
    min_count: the fewest generated samples, and reference images, it is defined on.
    """

    key: str
    higher_is_better: bool
    needs: str
    kinds: tuple[str, ...]
    library: str
    compute: Callable[..., float]
    options: Callable[[int, int], dict[str, Any]]
    extractor_options: Callable[[Any], dict[str, Any]] | None = None
    shared: Callable[[Features, ReferenceStats, Options], Any] | None = None
    reference_radii: tuple[int, ...] = ()
    min_count: int = 2  # a covariance, a kernel's unbiased mean

    def __call__(
        self,
        generated: Features,
        reference: ReferenceStats,
        options: Options | None = None,
        *,
        passes: dict[Any, Any] | None = None,
    ) -> float:
        """The value on one generated set; ``passes`` (one dict per generated set) holds the
        results of shared stages, so that the metrics reading one stage run it once."""
        settings = self.options(len(generated), reference.num) if options is None else options
        if self.shared is None:
            value = float(self.compute(generated, reference, settings))
        else:
            passes = {} if passes is None else passes
            stage = (self.shared, tuple(sorted(settings.items())))
            if stage not in passes:
                passes[stage] = self.shared(generated, reference, settings)
            value = float(self.compute(passes[stage]))
        if not math.isfinite(value):  # e.g. a failed matrix root: an error, never a result
            raise ValueError(f"{self.key} came out {value} on {len(generated)} samples; it is not a result")
        return value


METRICS: Registry[Metric] = Registry("metric")


def register(metric: Metric) -> Metric:
    METRICS.register(metric.key)(metric)
    return metric


def inception_score(
    probs: Tensor, splits: int = IS_SPLITS, shuffle_seed: int | None = RNG_SEED
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per split, as torch-fidelity computes it; returns (mean, std).

    probs (N, K) rows sum to 1. Rows are shuffled with RandomState(shuffle_seed) (None: no
    shuffle) and cut into ``splits`` contiguous chunks; p(y) is the chunk mean; 0 log 0 = 0.
    """
    N = probs.shape[0]
    p = probs.double()
    if shuffle_seed is not None:
        p = p[torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(N))]
    scores = []
    for i in range(splits):
        chunk = p[i * N // splits : (i + 1) * N // splits]  # (n_i, K)
        marginal = chunk.mean(dim=0, keepdim=True)  # (1, K)
        kl = (torch.xlogy(chunk, chunk) - torch.xlogy(chunk, marginal)).sum(dim=1)  # (n_i,)
        scores.append(kl.mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _frechet(generated: Features, reference: ReferenceStats, options: Options) -> float:
    return frechet_distance(gaussian_stats(generated.features), reference.stats, eps=options["eps"])


def _kid(generated: Features, reference: ReferenceStats, options: Options) -> float:
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    out = kid_features_to_metric(
        generated.features.double(),
        reference.features.double(),
        kid_subsets=options["subsets"],
        kid_subset_size=options["subset_size"],
        rng_seed=options["seed"],
        verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN]


def _precision_recall(generated: Features, reference: ReferenceStats, options: Options) -> PrecisionRecall:
    """Improved precision / recall (Kynkaanniemi et al., 2019), k-NN balls, torch-fidelity's arithmetic;
    the reference radii come with the reference statistics (cached), the generated ones are computed."""
    k = options["neighborhood"]
    features = generated.features  # (N, D)
    return precision_recall(features, knn_radii(features, k), reference.features, reference.knn_radii(k))


def _inception_score(generated: Features, reference: ReferenceStats, options: Options) -> float:
    if generated.logits is None:
        raise ValueError("the Inception Score needs class logits; use a classifier extractor")
    probs = generated.logits.double().softmax(dim=1)  # (N, K)
    return inception_score(probs, splits=options["splits"], shuffle_seed=options["seed"])[0]


def _caption_agreement(generated: Features, reference: ReferenceStats, options: Options) -> float:
    """mean_i [argmax_k logits_ik == labels_i] over the N generated samples."""
    if generated.logits is None or generated.labels is None:
        raise ValueError(
            "caption_agreement needs a classifier's logits and the class each sample was conditioned "
            "on (the labels saved with the samples)"
        )
    return float((generated.logits.argmax(dim=1) == generated.labels).double().mean())


def _agreement_options(n_gen: int, n_ref: int) -> dict[str, Any]:
    return {"prediction": "argmax of the classifier's logits"}


def _classifier_ceiling(extractor: Any) -> dict[str, Any]:
    return {"classifier_heldout_accuracy": getattr(extractor, "heldout_accuracy", None)}


def _frechet_options(n_gen: int, n_ref: int) -> dict[str, Any]:
    import scipy  # here, not at import: validation reads the METRICS table alone

    return {"eps": DEFAULT_EPS, "cov": "unbiased", "sqrtm": f"scipy {scipy.__version__}"}


def _kid_options(n_gen: int, n_ref: int) -> dict[str, Any]:
    size = min(KID_SUBSET_SIZE, n_gen, n_ref)
    return {"subsets": KID_SUBSETS, "subset_size": size, "kernel": "poly3", "seed": RNG_SEED}


def _prc_options(n_gen: int, n_ref: int) -> dict[str, Any]:
    return {"neighborhood": PRC_NEIGHBORHOOD}


def _is_options(n_gen: int, n_ref: int) -> dict[str, Any]:
    return {"splits": min(IS_SPLITS, n_gen), "seed": RNG_SEED}


def _miou_options(n_gen: int, n_ref: int) -> dict[str, Any]:
    return {}


BOTH = (IMAGE, VIDEO)


def _prc_metric(key: str, read: Callable[[PrecisionRecall], float]) -> Metric:
    """Precision or recall: ``read`` of the k-NN pass the two share."""
    return Metric(
        key,
        True,
        FEATURES,
        BOTH,
        TORCH_FIDELITY_LIBRARY,
        read,
        _prc_options,
        shared=_precision_recall,
        reference_radii=(PRC_NEIGHBORHOOD,),
        min_count=PRC_NEIGHBORHOOD + 1,  # each sample's k-th neighbour other than itself
    )


def _not_a_feature_metric(*args: Any) -> float:
    raise TypeError("mIoU scores segmentation masks: call harness.evaluation.segmentation.miou_result")


register(Metric(FID, False, FEATURES, (IMAGE,), UNMASK_LIBRARY, _frechet, _frechet_options))
register(Metric(FVD, False, FEATURES, (VIDEO,), UNMASK_LIBRARY, _frechet, _frechet_options))
register(Metric(KID, False, FEATURES, BOTH, TORCH_FIDELITY_LIBRARY, _kid, _kid_options))
register(_prc_metric(PRECISION, attrgetter("precision")))
register(_prc_metric(RECALL, attrgetter("recall")))
register(Metric(IS, True, LOGITS, (IMAGE,), UNMASK_LIBRARY, _inception_score, _is_options))
register(Metric(MIOU, True, MASKS, (), UNMASK_LIBRARY, _not_a_feature_metric, _miou_options))
register(
    Metric(
        CAPTION_AGREEMENT,
        True,
        LABELS,
        (IMAGE,),
        UNMASK_LIBRARY,
        _caption_agreement,
        _agreement_options,
        _classifier_ceiling,
    )
)


def metrics_for(kind: str | None, has_logits: bool | None) -> list[str]:
    """Every metric an extractor of input ``kind`` scores by default: not those of masks or of the
    samples' conditions, IS only with logits (``has_logits`` None: not known yet, kept; ``kind``
    None: any kind)."""
    return [
        name
        for name, m in ((name, METRICS[name]) for name in METRICS.names())
        if m.needs not in (MASKS, LABELS)
        and (kind is None or kind in m.kinds)
        and (m.needs != LOGITS or has_logits is not False)
    ]


def check_count(where: str, count: int, names: list[str]) -> None:
    """UserError unless ``count`` samples (or reference images) are enough for each metric."""
    for name in names:
        need = METRICS[name].min_count
        if METRICS[name].needs != MASKS and count < need:
            raise UserError(f"{where}: {count}; expected at least {need}, the fewest {name} is defined on")
