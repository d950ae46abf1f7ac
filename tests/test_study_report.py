"""The study report from MLflow: tidy table, best per method, figures from the axes, HTML, browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from harness.run.ledger import TrialRecord
from harness.tracking.tracker import Tracker
from reports.figures import _annotated_grid, palette, pareto_front
from reports.mlflow_source import records, study_table
from reports.study_report import write_report

STUDY = "report-study"


def _protocol(metric: str, direction: str) -> dict:
    return {"key": f"{metric}/digits-cnn/N100/abcd", "extractor": "digits-cnn", "direction": direction}


def _record(i: int, sampler: str, steps: int, temperature: float, fid: float, **extra) -> TrialRecord:
    nfe = 0.0 if sampler == "class_marginals" else float(steps)
    config = {
        "seed": 0,
        "data": {"name": "digits"},
        "model": {"timestep": "implicit"},
        "sampler": {"name": sampler, "num_steps": steps, "temperature": temperature},
        "eval": {"num_samples": 100},
    }
    return TrialRecord(
        trial_hash=f"{i:016x}",
        training_hash="t0",
        status="finished",
        config=config,
        metrics={"fid": fid, "precision": 1 / fid, "nfe": nfe, "seconds_per_sample": 0.001 * (1 + nfe)},
        intervals={"fid": [fid - 1.0, fid + 1.0]},
        protocols={"fid": _protocol("fid", "min"), "precision": _protocol("precision", "max")},
        **extra,
    )


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """A 2 samplers x 3 NFE x 2 temperatures study, a data baseline and a failed trial, in MLflow."""
    tmp = tmp_path_factory.mktemp("report")
    grid = tmp / "grid.png"
    Image.new("RGB", (40, 20), (200, 10, 10)).save(grid)
    uri = f"sqlite:///{tmp}/mlflow.db"
    recs, i = [], 0
    for sampler, offset in (("euler", 0.0), ("maskgit", 10.0)):
        for steps in (2, 8, 32):
            for temperature in (0.8, 1.0):
                fid = 100.0 / steps + offset + (5.0 if temperature == 1.0 else 0.0)
                recs.append(
                    _record(i, sampler, steps, temperature, fid, artifacts={"samples_png": str(grid)})
                )
                i += 1
    recs.append(_record(i, "class_marginals", 1, 1.0, 300.0))
    failed = _record(i + 1, "euler", 4, 1.0, 1.0)
    recs.append(TrialRecord(**{**failed.__dict__, "status": "failed", "metrics": {}, "error": "boom\nline"}))
    tracker = Tracker(uri, STUDY)
    tracker.start_invocation(
        {"name": STUDY, "metric": "fid"}, {"git_commit": "abc123", "version.torch": "9.9"}
    )
    tracker.sync(recs)
    tracker.end_invocation()
    study_dir = tmp / STUDY
    report = write_report(uri, STUDY, study_dir, "A test study", "fid")
    return {"uri": uri, "dir": study_dir, "report": report, "records": recs}


def test_tidy_table_has_one_row_per_trial_with_typed_config_and_metrics(study) -> None:
    table = study_table(study["uri"], STUDY)
    frame = table.table
    assert len(frame) == 14 and set(frame["status"]) == {"finished", "failed"}
    assert {"sampler.num_steps", "sampler.temperature", "sampler.name"} <= set(table.config_keys)
    assert frame["sampler.num_steps"].dropna().map(type).eq(int).all()  # parsed back from strings
    assert frame["sampler.temperature"].dropna().map(type).eq(float).all()
    assert {"fid", "precision", "nfe"} <= set(table.metric_keys) and "fid_ci_low" not in table.metric_keys
    by_hash = {r["trial_hash"]: r for r in records(table)}
    original = study["records"][0]
    rebuilt = by_hash[original.trial_hash]
    assert rebuilt["config"]["sampler"] == original.config["sampler"]
    assert rebuilt["metrics"]["fid"] == pytest.approx(original.metrics["fid"])
    assert rebuilt["intervals"]["fid"] == pytest.approx(original.intervals["fid"])
    assert rebuilt["protocols"]["precision"]["direction"] == "max"


def test_best_per_method_table_ranks_by_the_metric_direction(study) -> None:
    text = study["report"].markdown.read_text()
    section = text.split("## Best configuration per method")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "trial" not in line]
    methods = [row.split("|")[1].strip() for row in rows]
    # euler at 32 steps, T 0.8: 100/32 = 3.125; maskgit: 13.125; the baseline: 300
    assert methods == ["Euler sampler", "MaskGIT sampler", "trivial baseline (independent tokens per class)"]
    assert "3.125 ± 1" in rows[0] and "13.12 ± 1" in rows[1]


def test_figures_follow_the_axes_and_exist(study) -> None:
    names = {f.path.name for f in study["report"].figures}
    assert "fid_vs_sampler-num_steps.png" in names and "fid_vs_sampler-temperature.png" in names
    assert "fid_heatmap_sampler-num_steps_sampler-temperature.png" in names
    assert "tradeoff_fid_vs_seconds_per_sample.png" in names
    assert not any("cfg" in n for n in names)  # not varied: no CFG curve
    for figure in study["report"].figures:
        assert figure.path.is_file() and Image.open(figure.path).size[0] > 300


def test_nothing_drawn_runs_off_a_figure(study) -> None:
    """Each figure is cropped to what it draws, its legend outside the axes included (long method
    names here): a clipped label or legend would reach the image's edge, which stays blank."""
    for figure in study["report"].figures:
        grey = np.asarray(Image.open(figure.path).convert("L"))
        edges = [grey[:3], grey[-3:], grey[:, :3], grey[:, -3:]]
        assert min(edge.min() for edge in edges) == 255, figure.path.name


def test_markdown_names_protocol_failed_trial_and_context(study) -> None:
    text = study["report"].markdown.read_text()
    assert "## Protocols" in text and "digits-cnn" in text
    assert "## Failed trials" in text and "boom" in text
    assert "git commit: `abc123`" in text and "torch 9.9" in text
    assert "```yaml" in text and "metric: fid" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links and all((study["dir"] / link).is_file() for link in links)


def test_html_is_self_contained(study) -> None:
    page = study["report"].html.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    figures = len(study["report"].figures)
    assert len(sources) >= figures + 1  # the figures and at least one sample grid
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert "<table>" in page and "<h2>Figures</h2>" in page


def test_report_logged_to_the_parent_run_by_the_cli_report_command(study, tmp_path) -> None:
    from mlflow import MlflowClient

    tracker = Tracker(study["uri"], STUDY)
    assert tracker.reopen_latest_invocation()
    tracker.log_parent_artifact(study["report"].html)
    names = {a.path for a in MlflowClient(study["uri"]).list_artifacts(tracker.parent_run_id)}
    assert "report.html" in names


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=25),
    x_mode=st.sampled_from(["min", "max"]),
    y_mode=st.sampled_from(["min", "max"]),
)
def test_pareto_front_is_exactly_the_undominated_points(points, x_mode, y_mode) -> None:
    x = pd.Series([float(p[0]) for p in points])
    y = pd.Series([float(p[1]) for p in points])
    sx, sy = (1 if x_mode == "min" else -1), (1 if y_mode == "min" else -1)

    def dominated(i: int) -> bool:
        return any(
            sx * x[j] <= sx * x[i] and sy * y[j] <= sy * y[i] and (x[j], y[j]) != (x[i], y[i])
            for j in range(len(points))
        )

    front = set(pareto_front(x, y, x_mode, y_mode))
    undominated = {(x[i], y[i]) for i in range(len(points)) if not dominated(i)}
    assert {(x[i], y[i]) for i in front} == undominated  # one representative per undominated point


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_every_image(study, tmp_path) -> None:
    page = study["report"].html
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
        "document.title = `images ${ok}/${imgs.length}`;});</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    title = re.search(r"<title>images (\d+)/(\d+)</title>", result.stdout)
    assert title, result.stderr[-2000:]
    loaded, total = map(int, title.groups())
    assert total >= len(study["report"].figures) + 1 and loaded == total


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("None", None),
        ("4", 4),
        ("0.8", 0.8),
        ("true", True),
        ("[0.9, 0.99]", [0.9, 0.99]),
        ("euler", "euler"),
    ],
)
def test_params_parse_back_to_their_values(text, value) -> None:
    from reports.mlflow_source import parse_param

    assert parse_param(text) == value and type(parse_param(text)) is type(value)


def test_a_setting_present_on_some_trials_only_names_their_method() -> None:
    from reports.figures import with_methods

    table = pd.DataFrame(
        {"sampler.name": ["maskgit", "maskgit"], "recipe": ["maskgit", None], "nfe": [8.0, 8.0]}
    )
    named, keys = with_methods(table)
    assert "recipe" in keys
    assert named["method"].tolist() == ["MaskGIT sampler, MaskGIT recipe", "MaskGIT sampler"]


def test_a_sampler_option_names_only_that_samplers_methods() -> None:
    """The sampler study: MaskGIT's count rule names MaskGIT's rows only (Euler has no counts,
    Halton reads its own), and the Euler corrector is a method of its own."""
    from reports.figures import with_methods

    table = pd.DataFrame(
        {
            "sampler.name": ["euler", "euler", "maskgit", "maskgit", "halton"],
            "sampler.euler.remask_scale": [0.0, 4.0, 0.0, 0.0, 0.0],
            "sampler.maskgit.counts": ["floor", "floor", "reference", "maskgit", "floor"],
            "nfe": [8.0] * 5,
        }
    )
    named, _ = with_methods(table)
    assert named["method"].tolist() == [
        "Euler sampler, no corrector",
        "Euler sampler, remask scale 4.0",
        "MaskGIT sampler, the paper's reference counts",
        "MaskGIT sampler, Google's MaskGIT counts",
        "Halton-order sampler",
    ]


def test_a_relative_study_folder_gets_the_same_report(study, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # `make study` passes runs/<study>, relative to the repository
    report = write_report(study["uri"], STUDY, Path("relative") / STUDY, "A test study", "fid")
    assert (
        report.markdown.is_file() and "## Samples of the best configurations" in report.markdown.read_text()
    )


NAMES = st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=1, max_size=25, unique=True)


@given(NAMES, st.randoms())
@settings(max_examples=50, deadline=None)
def test_each_method_keeps_its_colour_and_ten_in_a_row_differ(methods, rng) -> None:
    colours = palette(methods)
    shuffled = list(methods)
    rng.shuffle(shuffled)
    assert palette(shuffled) == colours  # by name, not by the order the table lists them
    ordered = [colours[m] for m in sorted(methods)]
    for i, colour in enumerate(ordered):
        assert len(set(ordered[i : i + 10])) == len(ordered[i : i + 10])  # any ten in a row differ
        if i >= 10:
            assert colour == ordered[i - 10]  # then the ten colours again


def test_heatmap_writes_each_value_in_its_cell_and_leaves_a_missing_one_blank() -> None:
    import matplotlib.pyplot as plt

    values = [[10.0, 20.0, float("nan")], [30.0, 40.0, 50.0]]
    grid = pd.DataFrame(values, index=[4, 8], columns=[0.8, 0.9, 1.0])
    fig, ax = plt.subplots()
    _annotated_grid(fig, ax, grid, "viridis")
    texts = {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}
    finite = [(i, j, v) for i, row in enumerate(values) for j, v in enumerate(row) if v == v]
    cells = {((j + 0.5, i + 0.5), f"{v:.3g}") for i, j, v in finite}
    assert set(texts) == cells  # row 0 at y 0.5 (drawn on top: the y axis runs downwards)
    assert ax.get_ylim() == (2.0, 0.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["4", "8"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.8", "0.9", "1.0"]
    assert texts[((0.5, 0.5), "10")] == "white"  # viridis' dark end
    assert texts[((2.5, 1.5), "50")] == "black"  # its light end
    plt.close(fig)


def test_a_figure_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    """A save that fails part way (here: the writer raises after the header) leaves the figure
    that was there before, byte for byte, and no temporary file; a save that succeeds replaces it."""
    import matplotlib.pyplot as plt

    from reports.figures import save_figure

    path = tmp_path / "figures" / "curve.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, path)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])

    def broken(f, **kwargs):
        f.write(b"\x89PNG\r\n")  # the header, then the disk fills
        raise OSError("disk full")

    fig.savefig = broken
    with pytest.raises(OSError, match="disk full"):
        save_figure(fig, path)
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, path)
    assert path.read_bytes() != before and path.read_bytes().startswith(b"\x89PNG")
