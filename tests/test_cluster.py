"""A study on a simulated two-node Ray cluster: trials spread over both nodes, every trial recorded.

The cluster (Ray's own ``ray.cluster_utils.Cluster``: a head and a second node, one CPU each)
runs in a subprocess (tests/cluster_study.py), so that its Ray does not meet the session's.
With one CPU per node, one CPU per trial and concurrency 2, two trials can only run at once on
two different nodes: the trials (each records the node it ran on) must land on both.
"""

from __future__ import annotations

import json
import subprocess

from conftest import PYTHON, REPO, make_runs_root, study_file, subprocess_env, wait_untagged

from harness.run.ledger import Ledger
from harness.runner import prepare


def test_study_spreads_over_a_two_node_cluster(tmp_path, warm_eval_cache, process_tag) -> None:
    root = make_runs_root(tmp_path / "runs", warm_eval_cache)
    study = study_file(
        tmp_path,
        "cluster",
        # Trials of a few seconds each: shorter ones can all finish on the first actor (Tune reuses
        # it) before the second node's actor is up, and then nothing needs the second node.
        space={"sampler.num_steps": [16, 24], "sampler.temperature": [0.9, 1.0]},
        overrides={"eval.num_samples": 500, "eval.batch_size": 500},
        resources={"cpu": 1},
        concurrency=2,
    )
    plan = prepare(study, root).plan
    assert len(plan.trainings) == 1 and len(plan.trials) == 4
    out = tmp_path / "cluster.json"
    result = subprocess.run(
        [PYTHON, str(REPO / "tests" / "cluster_study.py"), str(study), str(root), str(out)],
        cwd=REPO,
        env=subprocess_env(process_tag),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads(out.read_text())

    nodes = {n["id"] for n in seen["nodes_before"]}
    assert len(nodes) == 2 and all(n["cpu"] == 1.0 for n in seen["nodes_before"])
    assert {n["id"] for n in seen["nodes_after"]} == nodes  # both nodes alive through the study
    hashes = {t.trial_hash() for t in plan.trials}
    assert {r["trial_hash"] for r in seen["records"]} == hashes
    assert all(r["status"] == "finished" for r in seen["records"])
    records = Ledger(root / "cluster").records()
    assert {r.trial_hash for r in records} == hashes and all(r.status == "finished" for r in records)
    assert {r.host.split("/")[-1] for r in records} == nodes  # trials ran on both nodes
    assert (root / "checkpoints" / plan.trainings[0].training_hash() / "done.json").is_file()
    assert wait_untagged(process_tag, timeout=30) == []  # cluster.shutdown() ended both nodes' processes
