"""Runs a study on a simulated two-node Ray cluster (ray.cluster_utils.Cluster); used by test_cluster.py.

    python tests/cluster_study.py STUDY.yaml RUNS_ROOT OUT.json

Starts a head node and a second node with one CPU each on this machine, connects to the
cluster, runs the study through ``harness.runner.execute(run, address=cluster.address)``
(the dispatcher joins the Ray this script initialised), and writes what it saw to OUT.json:
the nodes alive before and after the study, and the ledger (whose records name their node).
A separate process because the cluster's Ray is initialised in the driver, which a test
session with its own Ray cannot also be.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

for key, value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from harness.runner import execute, prepare  # noqa: E402

NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}


def alive_nodes() -> list[dict]:
    return [{"id": n["NodeID"], "cpu": n["Resources"].get("CPU", 0.0)} for n in ray.nodes() if n["Alive"]]


def main(study: str, runs_root: str, out: str) -> int:
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        before = alive_nodes()
        records = execute(prepare(study, Path(runs_root)), address=cluster.address)
        report = {
            "address": cluster.address,
            "nodes_before": before,
            "nodes_after": alive_nodes(),
            "records": [{"trial_hash": r.trial_hash, "status": r.status} for r in records],
        }
        Path(out).write_text(json.dumps(report, indent=2))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
