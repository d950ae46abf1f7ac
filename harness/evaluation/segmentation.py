"""Mean intersection-over-union for segmentation masks.

For class c over all pixels whose target is not ``ignore_index``:
    IoU_c = |{pred = c} & {target = c}| / |{pred = c} | {target = c}|
and mIoU is the mean of IoU_c over the classes present, i.e. those with a non-empty union
(in the prediction or the target); absent classes are NaN in the per-class vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.cache import sha256_tensor
from harness.evaluation.metrics import MIOU, UNMASK_LIBRARY
from harness.evaluation.protocol import MetricResult, Protocol

IGNORE_INDEX = 255


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """(K, K) long counts: row = target class, column = predicted class, ignored pixels dropped."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    p, t = pred[valid].long(), target[valid].long()
    for name, x in (("pred", p), ("target", t)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} has labels outside [0, {num_classes}) at non-ignored pixels")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """(K,) float64 IoU per class; NaN where the class is in neither pred nor target."""
    conf = confusion_matrix(pred, target, num_classes, ignore_index).double()
    intersection = conf.diagonal()
    union = conf.sum(dim=0) + conf.sum(dim=1) - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> float:
    """mIoU over the classes present; pred and target are integer masks of equal shape, e.g. (N, H, W)."""
    iou = per_class_iou(pred, target, num_classes, ignore_index)
    if torch.isnan(iou).all():
        raise ValueError("mIoU is undefined: every pixel is ignored")
    return float(iou.nanmean())


def miou_result(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    *,
    segmenter: str,
    segmenter_sha256: str,
    reference: str,
    sample_seed: int,
    ignore_index: int = IGNORE_INDEX,
) -> MetricResult:
    """mIoU with its protocol: the segmenter that made ``pred`` and the target masks it is scored on."""
    protocol = Protocol(
        metric=MIOU,
        extractor=segmenter,
        extractor_sha256=segmenter_sha256,
        reference=reference,
        reference_sha256=sha256_tensor(target.long()),
        num_reference=int(target.shape[0]),
        num_samples=int(pred.shape[0]),
        resize_rule="none (masks at target resolution)",
        dtype="int64 masks",
        library=UNMASK_LIBRARY,
        options=(("ignore_index", ignore_index), ("num_classes", num_classes)),
        sample_seeds=(sample_seed,),
    )
    return MetricResult(MIOU, mean_iou(pred, target, num_classes, ignore_index), True, protocol)
