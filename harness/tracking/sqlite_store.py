"""The SQLite MLflow store of a runs root: where it is, how a new one is made (a copy of an empty
store migrated once per MLflow version and kept in the cache: MLflow's migrations cost ~2 s per
new store, every fresh runs root), and a store that cannot be written named as an OSError."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from mlflow import MlflowClient

from harness.cache import cache_dir
from harness.errors import UserError
from harness.run.lock import file_lock

# SQLite's words for a store it cannot write, as the errno a file write would have raised.
_SQLITE_FAULTS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EACCES,
    "unable to open database file": errno.EACCES,
    "disk I/O error": errno.EIO,
}

# SQLite's words for a file that is not (or no longer) a database: no write would succeed.
_NOT_A_STORE = ("file is not a database", "database disk image is malformed")


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a SQLite URI (None for other stores and in-memory databases).

    SQLAlchemy reads ``sqlite:///rel.db`` as a relative path and ``sqlite:////abs.db`` as absolute,
    so the path is whatever follows the third slash.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db_path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if not db_path or db_path == ":memory:":
        return None
    return Path(db_path).resolve()


def artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, not in ``./mlruns`` of the cwd."""
    db_path = _sqlite_path(tracking_uri)
    return None if db_path is None else (db_path.parent / "mlartifacts").as_uri()


def connect(tracking_uri: str) -> MlflowClient:
    """A client; a SQLite store is opened (and, when new, created) under ``<db>.lock``."""
    db_path = _sqlite_path(tracking_uri)
    if db_path is None:
        return MlflowClient(tracking_uri=tracking_uri)
    with file_lock(db_path.with_name(f"{db_path.name}.lock")):
        if not db_path.exists():
            _copy_empty_store(db_path)
        return MlflowClient(tracking_uri=tracking_uri)  # creates the tables of a store not copied


def _empty_store() -> Path:
    """An empty SQLite store, migrated by this MLflow, in the cache (made once, under a lock)."""
    import alembic
    import mlflow
    import sqlalchemy

    versions = (
        f"mlflow-{mlflow.__version__}-alembic-{alembic.__version__}-sqlalchemy-{sqlalchemy.__version__}"
    )
    template = cache_dir() / "mlflow" / f"empty-{versions}.db"
    if template.is_file():
        return template
    with file_lock(template.with_name(f"{template.name}.lock")):
        if not template.is_file():
            made = template.with_name(f".{template.name}.{os.getpid()}.tmp")
            try:
                MlflowClient(tracking_uri=f"sqlite:///{made}").search_experiments()  # the migrations
                _sqlite_copy(made, template)
            finally:
                made.unlink(missing_ok=True)
    return template


def _sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database (its backup API), renamed into place."""
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with (
            contextlib.closing(sqlite3.connect(source)) as src,
            contextlib.closing(sqlite3.connect(partial)) as dst,
        ):
            src.backup(dst)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _copy_empty_store(db_path: Path) -> None:
    """A new store as a copy of the cached empty one. Without a usable cache (unwritable, full),
    MLflow creates the store itself, as it always did: the copy is a speed-up, never a failure."""
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        _sqlite_copy(_empty_store(), db_path)
    except (OSError, sqlite3.Error):
        db_path.unlink(missing_ok=True)


@contextlib.contextmanager
def store_faults(tracking_uri: str) -> Iterator[None]:
    """A SQLite store that cannot be written raises OSError(errno, cause, database file)."""
    try:
        yield
    except OSError:
        raise
    except Exception as err:
        text = str(err)
        code = next((code for words, code in _SQLITE_FAULTS.items() if words in text), None)
        db_path = _sqlite_path(tracking_uri)
        if db_path is not None and any(words in text for words in _NOT_A_STORE):
            raise UserError(
                f"MLflow store {db_path}: not a readable SQLite database ({text.splitlines()[0][:200]});"
                " move it aside (a new store is made and filled from the ledgers) or name another"
                " with --tracking-uri"
            ) from None
        if code is None or db_path is None:
            raise
        cause = f"{os.strerror(code)} (MLflow store: {text.splitlines()[0]})"
        raise OSError(code, cause, str(db_path)) from err
