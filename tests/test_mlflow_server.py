"""A study that logs through an MLflow tracking server (as a team or a cluster would), not a file.

The test starts ``mlflow server`` bound to 127.0.0.1 with a SQLite backend and a local artifact
root, runs a tiny study with ``--tracking-uri http://127.0.0.1:<port>``, and reads the runs and
the report artifact back through the server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_runs_root, study_file

import run_study
from reports.mlflow_source import study_table

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer /health within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_a_study_logs_through_a_tracking_server(server, tmp_path, warm_eval_cache, ray_session) -> None:
    from mlflow import MlflowClient

    root = make_runs_root(tmp_path / "runs", warm_eval_cache)
    study = study_file(tmp_path, "served", space={"sampler.num_steps": [2, 3]})
    assert run_study.main(["run", str(study), "--runs-root", str(root), "--tracking-uri", server]) == 0
    assert not (root / "mlflow.db").exists()  # nothing went to the default file store
    table = study_table(server, "served").table
    assert len(table) == 2 and set(table["status"]) == {"finished"}
    assert sorted(table["sampler.num_steps"]) == [2, 3] and table["fid"].notna().all()
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("unmask/served")
    parents = client.search_runs([experiment.experiment_id], "tags.`unmask.role` = 'invocation'")
    names = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"report.md", "report.html"} <= names  # artifacts proxied by the server
