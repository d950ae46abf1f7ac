"""A study whose metric was measured under several protocols (another N, extractor or reference)
ranks and draws the values of one protocol, the one most trials carry, and says so."""

from __future__ import annotations

import dataclasses

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from test_study_report import _record

from harness.tracking.tracker import Tracker
from reports.figures import under_main_protocol
from reports.study_report import write_report

STUDY = "two-protocols"


def _under(record, key: str):
    protocols = {name: {**p, "key": f"{name}/{key}"} for name, p in record.protocols.items()}
    return dataclasses.replace(record, protocols=protocols)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=12))
def test_the_main_protocol_is_the_one_most_rows_carry_and_only_its_rows_are_kept(keys) -> None:
    table = pd.DataFrame(
        {"fid": [float(i) for i in range(len(keys))], "protocol": [{"fid": {"key": k}} for k in keys]}
    )
    rows, order = under_main_protocol(table, "fid")
    recorded = [k for k in keys if k is not None] or [None]  # a value without a protocol: last
    counts = {k: recorded.count(k) for k in recorded}
    assert order[0] in [k for k in counts if counts[k] == max(counts.values())]
    assert sorted(order, key=str) == sorted(set(keys), key=str)
    kept = [p["fid"]["key"] for p in rows["protocol"]]
    assert kept == [k for k in keys if k == order[0]]


def test_best_per_method_never_ranks_a_value_of_another_protocol(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    records = [
        _under(_record(0, "euler", 8, 0.8, 20.0), "N1000"),
        _under(_record(1, "euler", 8, 1.0, 22.0), "N1000"),
        _under(_record(2, "maskgit", 8, 0.8, 25.0), "N1000"),
        _under(_record(3, "maskgit", 8, 1.0, 10.0), "N100"),  # better, but of fewer samples
    ]
    tracker = Tracker(uri, STUDY)
    tracker.start_invocation({"name": STUDY, "metric": "fid"}, {"git_commit": "abc"})
    tracker.sync(records)
    tracker.end_invocation()
    text = write_report(uri, STUDY, tmp_path / STUDY, "t", "fid").markdown.read_text()
    best = text.split("## Best configuration per method")[1].split("\n## ")[0]
    rows = [line for line in best.splitlines() if line.startswith("| ") and "trial" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["Euler sampler", "MaskGIT sampler"]
    assert "20" in rows[0] and "25" in rows[1] and "10" not in rows[1].split("|")[3]
    assert "Ranked under protocol `fid/N1000`" in best


@settings(max_examples=100, deadline=None)
@given(
    value=st.integers(-1000, 1000), below=st.integers(0, 100), above=st.integers(0, 100)
)  # whole numbers: the bounds exact, the boundary case decided the same way here and there
def test_a_cell_shows_plus_minus_only_for_an_interval_centred_on_its_value(value, below, above) -> None:
    """± h claims [value - h, value + h]: shown only when that is the interval (to a tenth of h)."""
    from reports.markdown import MetricColumn, metric_cell

    record = {
        "metrics": {"fid": value},
        "intervals": {"fid": [value - below, value + above]},
        "protocols": {},
    }
    cell = metric_cell(record, MetricColumn("fid", None, split=False))
    centred = abs(above - below) / 2 <= 0.1 * (above + below) / 2
    assert ("±" in cell) == centred and ("[" in cell) == (not centred)
