"""Video: clips on a (T, H, W) token grid, decoded to (N, C, T, H, W) and scored by video metrics
(FVD); a sample grid shows one clip a row. Any dataset whose grid has three axes is video."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.data.types import DatasetShape
from harness.evaluation.extractors import VIDEO
from harness.tasks.base import Task

if TYPE_CHECKING:
    from harness.config.trial import TrialConfig


class Video(Task):
    name = "video generation"
    sample_kind = VIDEO

    def applies(self, trial: TrialConfig, shape: DatasetShape) -> bool:
        return not shape.modalities and len(shape.grid) == 3

    def preview_count(self) -> int:
        return 20  # clips, one a row


TASK = Video()
