"""`run_study.py` turns bad input (harness.errors.UserError) into one `error:` line and exit code 2;
any other exception is a bug and keeps its traceback (exit 1), whatever its type."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BASE_YAML, REPO, subprocess_env

import run_study
from harness.errors import UserError

NO_SHARDS = "no-such-shards"


def _cli(tmp_path: Path, *args: str, tag: str = "cli-errors") -> subprocess.CompletedProcess:
    """run_study.py in a subprocess, from tmp_path, with the session's evaluator cache (conftest);
    ``tag`` marks its processes."""
    return subprocess.run(
        [sys.executable, str(REPO / "run_study.py"), *args],
        cwd=tmp_path,
        env=subprocess_env(tag),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _study(tmp_path: Path, overrides: dict[str, Any]) -> str:
    path = tmp_path / "study.yaml"
    spec = {"name": "cli_errors", "base": str(BASE_YAML), "overrides": overrides}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def _refused(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr


SHARDS = {"data.name": "shards", "data.options": {"path": NO_SHARDS, "grid": [8, 8], "vocab_size": 16}}


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"data.name": "digitz"}, ["data.name", "'digitz'", "did you mean 'digits'"]),
        ({"data.options": {"colour": True}}, ["data.options.colour", "num_heldout"]),
    ],
    ids=["unknown-dataset", "unknown-data-option"],
)
def test_validate_refuses_bad_data_with_exit_2(tmp_path: Path, overrides: dict, words: list[str]) -> None:
    _refused(_cli(tmp_path, "validate", _study(tmp_path, overrides), "--runs-root", "runs"), *words)
    assert not (tmp_path / "runs").exists()


def test_a_missing_study_file_exits_2(tmp_path: Path) -> None:
    _refused(
        _cli(tmp_path, "validate", "nowhere.yaml", "--runs-root", "runs"), "no study file at 'nowhere.yaml'"
    )


def test_evaluate_on_a_missing_samples_folder_exits_2(tmp_path: Path, warm_eval_cache: Path) -> None:
    _refused(_cli(tmp_path, "evaluate", "missing", "--dataset", "digits"), "'missing'", "samples.npz")


def test_running_on_a_missing_shard_folder_exits_2(tmp_path: Path, process_tag: str) -> None:
    """Planned without the data (grid and vocabulary are in the options), refused when it loads."""
    overrides = {**SHARDS, "eval.extractor": "digits-cnn", "eval.metrics": ["fid"], "train.steps": 2}
    study = _study(tmp_path, overrides)
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    result = _cli(tmp_path, "run", study, "--runs-root", "runs", "--tracking-uri", uri, tag=process_tag)
    _refused(result, f"data.options.path {NO_SHARDS!r}: no manifest.json")


# ---- in process: more bad input, and only UserError becomes exit 2 ------------------------------


def test_a_missing_captioned_shard_folder_is_refused_by_validate(tmp_path: Path, capsys) -> None:
    """A captioned folder is read when the study is validated: its words are the vocabulary."""
    overrides = {**SHARDS, "data.options": {**SHARDS["data.options"], "path": str(tmp_path / NO_SHARDS)}}
    overrides["data.options"]["captions"] = True
    assert run_study.main(["validate", _study(tmp_path, overrides), "--runs-root", str(tmp_path)]) == 2
    assert f"{NO_SHARDS}': no manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (["--extractor", "digits-cnm"], ["extractor", "'digits-cnm'", "digits-cnn"]),
        (["--metrics", "fidd"], ["metrics", "'fidd'", "did you mean 'fid'"]),
    ],
    ids=["unknown-extractor", "unknown-metric"],
)
def test_evaluate_refuses_unknown_names(tmp_path: Path, capsys, options: list[str], words: list[str]) -> None:
    assert run_study.main(["evaluate", str(tmp_path), "--dataset", "digits", *options]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


@pytest.mark.parametrize("error", [ValueError, KeyError, FileNotFoundError, RuntimeError])
def test_a_bug_inside_a_command_keeps_its_exception(monkeypatch, error: type[Exception]) -> None:
    def bug(args):
        raise error("a bug, not bad input")

    monkeypatch.setattr(run_study, "_evaluate", bug)
    with pytest.raises(error, match="a bug, not bad input"):
        run_study.main(["evaluate", "samples", "--dataset", "digits"])


def test_a_user_error_inside_a_command_is_one_line_and_exit_2(monkeypatch, capsys) -> None:
    def refuse(args):
        raise UserError("samples: not what was expected")

    monkeypatch.setattr(run_study, "_evaluate", refuse)
    assert run_study.main(["evaluate", "samples", "--dataset", "digits"]) == 2
    assert capsys.readouterr().err == "error: samples: not what was expected\n"


EXIT_NOW = """
import atexit, sys, threading, time
sys.path.insert(0, {repo!r})
import run_study

def late():  # a thread still working when main returns, not a daemon: its work is waited for
    time.sleep(0.3)
    open({thread!r}, "w").write("done")

def main():
    threading.Thread(target=late).start()
    atexit.register(lambda: open({handler!r}, "w").write(str(os.path.exists({thread!r}))))
    print("said", end="")  # no newline into a pipe: still in the buffer at exit
    sys.stderr.write("noted")
    return 3

import os
run_study.exit_now(main())
"""


def test_the_cli_exits_with_the_code_once_threads_and_exit_handlers_are_done(tmp_path: Path) -> None:
    """run_study.py leaves the interpreter's teardown to the OS: the exit code, the buffered output,
    the non-daemon threads' work and the atexit handlers (after those threads) are as a normal
    exit has them."""
    thread, handler = tmp_path / "thread", tmp_path / "handler"
    script = EXIT_NOW.format(repo=str(REPO), thread=str(thread), handler=str(handler))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert (done.stdout, done.stderr) == ("said", "noted")
    assert thread.read_text() == "done"
    assert handler.read_text() == "True"  # the handler ran after the thread had finished
