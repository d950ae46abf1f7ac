"""Every bad input of the corpus (tests/reliability/corpus.py) is refused cleanly by run_study.py:
exit code 2, an ``error:`` on stderr that names the field, value or path at fault, no traceback,
nothing written (no runs root, no cache entry, no output file), within a time bound; the cases
that could hang or blow up memory run as the real CLI under a wall-clock and an RLIMIT_AS limit.

A case that fails because the harness misbehaves keeps its place, marked as a strict xfail with
the bug's description (``Case.bug``): fixing the bug turns it into an XPASS, which fails until the
mark is removed. The controls show that the same files, made valid, are accepted, so that each
refusal is the check's and not the corpus's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import CASES, DIGITS_SAMPLES, IMAGES, TOKENIZE
from corpus_kit import STUDY, Case, study
from refusal import prepare_case, run_case, run_in_process, snapshot, warm_up


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=f"bug: {case.bug}")] if case.bug else []
    if case.subprocess:  # ~20 s each: the CLI imports torch, Ray and MLflow on 2 busy cores
        marks.append(pytest.mark.slow)
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module", autouse=True)
def _imported() -> None:
    """The commands' lazy imports done once, outside every case's time bound."""
    warm_up()


def test_the_corpus_has_80_distinct_cases() -> None:
    assert len(CASES) >= 80
    assert len({case.id for case in CASES}) == len(CASES)
    assert all(case.expect for case in CASES), "every case names what its refusal must name"


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input_is_refused_cleanly(case: Case, tmp_path: Path) -> None:
    """In this process, or (case.subprocess) as the CLI under a time and an address-space limit."""
    _, problems = run_case(case, tmp_path)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("argv", "files", "writes"),
    [
        (("validate", STUDY, "--runs-root", "@TMP@/runs"), {"study.yaml": study()}, []),
        (
            ("evaluate", "@TMP@/samples", "--dataset", "digits", "--metrics", "fid"),
            {"samples/samples.npz": DIGITS_SAMPLES},
            ["cache"],
        ),
        (TOKENIZE, IMAGES, ["out"]),
    ],
    ids=["validate", "evaluate", "tokenize"],
)
def test_the_corpus_files_made_valid_are_accepted(
    tmp_path: Path, argv: tuple[str, ...], files: dict, writes: list[str]
) -> None:
    """The control: a study over the same base, samples of the right shape, the same image folder."""
    argv = prepare_case(Case("control", argv, (), files), tmp_path)
    before = snapshot(tmp_path)
    outcome = run_in_process(argv, tmp_path, time_limit=120)
    assert outcome.code == 0, outcome.stderr
    written = {path.split("/")[0] for path in set(snapshot(tmp_path)) - set(before)}
    assert written == set(writes)
