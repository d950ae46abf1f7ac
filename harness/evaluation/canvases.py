"""The ``canvases-cnn`` domain extractor: a DomainCNN that reads a digit canvas's scene.

It is trained on real canvases (``harness.data.sources.canvases``) to name the scene: which digit comes
first, the relation (left of / above) and which digit second, 200 classes. Its penultimate
features score canvases by FID, and its predictions check that a generated canvas shows what
its caption says (caption agreement). Importing this module registers the extractor.
"""

from __future__ import annotations

from torch import Tensor

from harness.data.sources.canvases import canvases_split
from harness.evaluation.domain import DomainSpec, register_domain_extractor
from harness.evaluation.domain_cnn import ClassifierTrainConfig, DomainCNNConfig

# Canvases the classifier learns from: many more scenes than the model's training set needs,
# all composed from the train digits (held-out canvases use only held-out digits).
NUM_CANVASES = {"train": 12000, "heldout": 1000}
CANVAS = 16


def canvas_scenes(split: str) -> tuple[Tensor, Tensor]:
    """(images (N, 1, 16, 16) in [0, 1], scene classes (N,) in [0, 200))."""
    c = canvases_split(split, NUM_CANVASES[split], CANVAS)
    return c.images, c.scene_class


CANVASES_CNN = register_domain_extractor(
    DomainSpec(
        extractor="canvases-cnn",
        dataset="digit-canvases",
        load_split=canvas_scenes,
        model=DomainCNNConfig(
            in_channels=1, num_classes=200, input_size=(CANVAS, CANVAS), width=16, feature_dim=128
        ),
        train=ClassifierTrainConfig(epochs=12, batch_size=64, lr=2e-3, threads=2),
    )
)
