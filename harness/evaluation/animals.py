"""The ``animals-cnn`` domain extractor: a DomainCNN trained on the real animal silhouettes.

It learns from the real 28 x 28 training images (not their VQ reconstructions), so its features
(128-d, penultimate layer after ReLU) measure how far samples are from real animals, and the
tokenizer's own reconstruction error shows up in FID(real, reconstructions) as a floor.
Importing this module registers the extractor with the evaluator's registry.
"""

from __future__ import annotations

from harness.data.sources.animals import animal_split
from harness.evaluation.domain import DomainSpec, register_domain_extractor
from harness.evaluation.domain_cnn import ClassifierTrainConfig, DomainCNNConfig

ANIMALS_CNN = register_domain_extractor(
    DomainSpec(
        extractor="animals-cnn",
        dataset="animals",
        load_split=animal_split,
        model=DomainCNNConfig(in_channels=1, num_classes=10, input_size=(28, 28), width=16, feature_dim=128),
        train=ClassifierTrainConfig(epochs=15, batch_size=64, lr=2e-3, threads=2),
    )
)
