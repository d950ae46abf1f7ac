"""harness.runner.check_resources: a request the cluster cannot hold at once is refused up front."""

from __future__ import annotations

import pytest

from harness.config.study import StudySpec
from harness.config.trial import ConfigError
from harness.runner import check_resources


def spec(**resources) -> StudySpec:
    return StudySpec(name="s", resources=resources)


def test_a_trial_larger_than_the_cluster_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"resources.cpu = 4.0 but the cluster has 2.0"):
        check_resources(spec(cpu=4), {"CPU": 2.0, "GPU": 0.0})
    with pytest.raises(ConfigError, match=r"resources.gpu = 1.0 but the cluster has 0.0"):
        check_resources(spec(gpu=1), {"CPU": 2.0, "GPU": 0.0})


def test_data_parallel_workers_need_their_share_at_once() -> None:
    check_resources(spec(cpu=1, workers=2), {"CPU": 2.0, "GPU": 0.0})  # fits exactly
    with pytest.raises(ConfigError, match=r"resources.workers = 3 x resources.cpu = 1.0 needs 3 CPU"):
        check_resources(spec(cpu=1, workers=3), {"CPU": 2.0, "GPU": 0.0})
    with pytest.raises(ConfigError, match=r"resources.workers = 2 x resources.gpu = 1.0 needs 2 GPU"):
        check_resources(spec(cpu=1, gpu=1, workers=2), {"CPU": 8.0, "GPU": 1.0})
