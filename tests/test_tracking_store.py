"""MLflow's store for a runs root: where it is, how a new one is made, and that MLflow sends nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from mlflow import MlflowClient
from test_tracking import _record, _trial_runs

from harness.tracking.tracker import Tracker, resolve_tracking_uri


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri(None, tmp_path) == "sqlite:///from-env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    runs_root = tmp_path / "runs"
    assert resolve_tracking_uri(None, runs_root) == f"sqlite:///{runs_root.resolve()}/mlflow.db"
    assert runs_root.is_dir()


def _tables(db: Path) -> dict[str, object]:
    """The store's schema as data: each table's columns (name, type, not null, primary key), the
    index names and the migration version (the SQL text of a migrated table may differ in the
    order of its constraints from one migration run to another)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        names = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        schema: dict[str, object] = {
            name: sorted((c[1], c[2], c[3], c[5]) for c in con.execute(f'pragma table_info("{name}")'))
            for name in names
        }
        schema["indexes"] = sorted(
            r[0] for r in con.execute("select name from sqlite_master where type = 'index'")
        )
        schema["alembic_version"] = con.execute("select version_num from alembic_version").fetchall()
    return schema


def test_a_new_store_is_a_copy_of_the_cached_empty_one(tmp_path, monkeypatch):
    """The first new store migrates an empty one into the cache; later ones copy it. A copied store
    has the schema of one MLflow creates itself, and takes the study's runs like any other."""
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    Tracker(f"sqlite:///{first}", "copied")
    templates = list((tmp_path / "cache" / "mlflow").glob("empty-*.db"))
    assert len(templates) == 1
    made_at = templates[0].stat().st_mtime_ns
    tracker = Tracker(f"sqlite:///{second}", "copied")
    assert templates[0].stat().st_mtime_ns == made_at  # reused, not migrated again
    tracker.start_invocation({"name": "copied"}, {})
    tracker.sync([_record("c" * 64)])
    tracker.end_invocation("FINISHED")
    assert len(_trial_runs(f"sqlite:///{second}", "copied")) == 1
    by_mlflow = tmp_path / "plain.db"
    MlflowClient(tracking_uri=f"sqlite:///{by_mlflow}").search_experiments()
    assert _tables(first) == _tables(second) == _tables(by_mlflow)


def test_an_unwritable_cache_leaves_mlflow_to_create_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("UNMASK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    db = tmp_path / "runs" / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}", "uncached")
    tracker.start_invocation({"name": "uncached"}, {})
    tracker.end_invocation("FINISHED")
    assert db.is_file() and not list(tmp_path.glob("runs/.*partial"))


TELEMETRY = """
import json, os, sys
sys.path.insert(0, {repo!r})
import {first}
from harness.tracking.tracker import Tracker
import mlflow.telemetry.client as telemetry

at_import = telemetry.get_telemetry_client() is not None  # MLflow sets its client up at import
tracker = Tracker({uri!r}, "telemetry")
tracker.start_invocation({{"name": "telemetry"}}, {{}})
tracker.end_invocation()
print(json.dumps({{"client at import": at_import, "client": telemetry.get_telemetry_client() is not None}}))
"""


@pytest.mark.parametrize("first", ["harness.tracking.tracker", "reports.mlflow_source"])
def test_mlflow_sends_no_telemetry_and_writes_nothing_outside_the_runs_root(tmp_path, first) -> None:
    """Outside CI and pytest (whose variables MLflow reads as "no telemetry") MLflow would start a
    telemetry client at import: a config fetched from its servers, usage posted there, an id
    written under ~/.config. Whichever of our modules imports MLflow first, it starts none."""
    home = tmp_path / "home"
    home.mkdir()
    ci = {"CI", "GITHUB_ACTIONS", "PYTEST_CURRENT_TEST", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in os.environ.items() if k not in ci and not k.startswith("PYTEST")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = TELEMETRY.format(repo=str(REPO), first=first, uri=uri)
    command = [sys.executable, "-c", script]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"client at import": False, "client": False}
    assert not list(home.rglob("*")), sorted(str(p) for p in home.rglob("*"))  # no id under ~/.config
