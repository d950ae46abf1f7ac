"""Synthetic moving-digit clips and the project-trained 3D-CNN video feature extractor.

Until real video data arrives, FVD's domain network is a DomainCNN (spatial_dims=3) trained to
name both the digit and its motion in clips built from the digits splits. A clip moves one
8 x 8 digit across a canvas x canvas frame at one pixel per frame in one of ``MOTIONS``;
its class is digit * len(MOTIONS) + motion, so the features must encode appearance and motion.
``bouncing`` clips (the moving-digits dataset's option, not the extractor's training data) move
BOUNCE_SPEED pixels per frame in the same directions and reflect off the canvas borders.
"""

from __future__ import annotations

from harness.data.sources.moving_digits import CANVAS, MOTIONS, NUM_FRAMES, moving_digits_split
from harness.evaluation.domain import DomainSpec, register_domain_extractor
from harness.evaluation.domain_cnn import ClassifierTrainConfig, DomainCNNConfig
from harness.evaluation.reference import ReferenceSet


def moving_digits_reference(split: str = "train") -> ReferenceSet:
    """The moving-digit clips of a split as an FVD reference set (N, 1, T, S, S)."""
    return ReferenceSet(f"moving-digits/{split}", "moving-digits", moving_digits_split(split)[0])


MOVING_DIGITS_CNN3D = register_domain_extractor(
    DomainSpec(
        extractor="moving-digits-cnn3d",
        dataset="moving-digits",
        load_split=moving_digits_split,
        model=DomainCNNConfig(
            in_channels=1,
            num_classes=10 * len(MOTIONS),
            input_size=(NUM_FRAMES, CANVAS, CANVAS),
            width=8,
            pooled_size=3,
        ),
        train=ClassifierTrainConfig(epochs=10, batch_size=32, lr=3e-3),
    )
)
