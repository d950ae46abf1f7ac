"""Video: clips on a (T, H, W) token grid, decoded to (N, C, T, H, W) and scored by video metrics
(FVD); a sample grid shows one clip a row. Any dataset whose grid has three axes is video."""

from __future__ import annotations

from harness.data.types import DatasetShape
from harness.evaluation.extractors import VIDEO
from harness.tasks.base import Task, Trial


class Video(Task):
    name = "video generation"
    sample_kind = VIDEO

    def applies(self, trial: Trial, shape: DatasetShape) -> bool:
        return not shape.modalities and len(shape.grid) == 3

    def claim(self, trial: Trial, shape: DatasetShape) -> str:
        return f"data.name {trial.data.name!r} has a (T, H, W) grid {list(shape.grid)}"

    def preview_count(self) -> int:
        return 20  # clips, one a row


TASK = Video()
