"""Which rows the findings compare (reports/comparable.py) and how two are compared
(reports/difference.py): finite results only, model rows only, one protocol key, typed ``where``,
each side's own interval."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reports.comparable import comparable, same, select
from reports.findings import check, difference, nearest_value

AS_GOOD = {"kind": "at_least_as_good", "key": "model.timestep", "a": "implicit", "b": "explicit"}


def _row(timestep: str, fid: float, half: float = 1.0, **more) -> dict:
    protocol = {"fid": {"direction": "min", "key": "fid/N1000", "num_samples": 1000}}
    row = {"status": "finished", "nfe": 8.0, "model.timestep": timestep, "fid": fid}
    return {**row, "fid_ci_low": fid - half, "fid_ci_high": fid + half, "protocol": protocol, **more}


def _seeded(timestep: str, values: list[float], **more) -> dict:
    row = _row(timestep, sum(values) / len(values), **more)
    entry = {**row["protocol"]["fid"], "sample_seeds": list(range(len(values))), "per_seed": values}
    return {**row, "protocol": {"fid": entry}}


BAD = st.sampled_from([math.nan, math.inf, -math.inf])


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["fid", "fid_ci_low", "fid_ci_high", "per_seed"]), BAD)
def test_a_row_with_a_nan_or_inf_is_no_result_and_never_decides(where, bad) -> None:
    """The broken row (the best explicit one, were it read) is left out: the verdict is the one
    without it, whatever field is broken, and nothing raises."""
    broken = _seeded("explicit", [20.0, 21.0, 22.0])
    if where == "per_seed":
        broken["protocol"]["fid"]["per_seed"][1] = bad
    else:
        broken[where] = bad
    clean = [_seeded("implicit", [30.0, 31.0, 32.0]), _seeded("explicit", [40.0, 41.0, 42.0])]
    without = check(pd.DataFrame(clean), "fid", AS_GOOD)
    assert without.verdict == "holds"
    assert check(pd.DataFrame([*clean, broken]), "fid", AS_GOOD) == without
    assert len(comparable(pd.DataFrame([*clean, broken]), "fid")[0]) == 2
    assert nearest_value(pd.DataFrame([*clean, broken]), {"model.timestep": "explicit"}, "fid")[1] == 41.0


def test_a_difference_with_an_infinite_seed_is_not_paired_and_does_not_raise() -> None:
    a = pd.Series(_seeded("implicit", [60.0, math.inf, 64.0]))
    d = difference(a, pd.Series(_seeded("explicit", [60.5, 62.5, 65.0])), "fid")
    assert not d.paired and d.decided() == 0


def test_a_data_baseline_is_no_model_to_compare() -> None:
    """A held-out-tokens row (nfe = 0) with the best FID takes part in no finding, no nearest value."""
    rows = [_row("implicit", 30.0), _row("explicit", 25.0), _row("implicit", 5.0, nfe=0.0)]
    table = pd.DataFrame(rows).assign(**{"sampler.num_steps": 16})
    assert check(table, "fid", AS_GOOD).verdict == "does not hold"  # 30 vs 25, not 5 vs 25
    used, value = nearest_value(table, {"model.timestep": "implicit", "sampler.num_steps": 16}, "fid")
    assert value == 30.0


def test_a_table_without_the_metric_is_undetermined_with_the_reason() -> None:
    table = pd.DataFrame([{"status": "failed", "model.timestep": "implicit", "protocol": {}}])
    result = check(table, "fid", {"kind": "improves_along", "axis": "train.steps"})
    assert result.verdict == "undetermined" and "no trial measured fid" in result.detail
    assert nearest_value(table, {"model.timestep": "implicit"}, "fid") == ({}, None)


@settings(max_examples=100, deadline=None)
@given(st.integers(-1000, 1000))
def test_where_compares_numbers_as_numbers_and_text_as_text(n) -> None:
    assert same(float(n), n) and same(n, float(n)) and same(str(n), str(n))
    assert not same(str(n), n) and not same(n, str(n))
    assert not same(True, 1) and same(True, True)
    table = pd.DataFrame({"sampler.num_steps": [float(n), float(n) + 0.5, None]})
    assert len(select(table, {"sampler.num_steps": n})) == 1


def test_a_where_on_a_column_that_became_float_matches_its_integer() -> None:
    rows = [
        _row("implicit", 10.0, **{"sampler.num_steps": 4}),
        _row("explicit", 12.0, **{"sampler.num_steps": 4}),
    ]
    rows.append(_row("explicit", 300.0))  # no num_steps: the column becomes float (4.0, NaN)
    finding = {**AS_GOOD, "where": {"sampler.num_steps": 4}}
    assert check(pd.DataFrame(rows), "fid", finding).verdict == "holds"


def _curve(values: list[float], half: float) -> pd.DataFrame:
    rows = [_row("implicit", v, half, **{"sampler.num_steps": 2**i}) for i, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_worsens_along_is_undetermined_within_the_intervals() -> None:
    finding = {"kind": "worsens_along", "axis": "sampler.num_steps"}
    assert check(_curve([22.0, 21.0, 20.99], 5.0), "fid", finding).verdict == "undetermined"
    assert check(_curve([22.0, 21.0, 10.0], 1.0), "fid", finding).verdict == "does not hold"
    assert check(_curve([22.0, 21.0, 30.0], 1.0), "fid", finding).verdict == "holds"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 100), min_size=2, max_size=6), st.sampled_from(["improves_along", "worsens_along"])
)
def test_along_an_axis_nothing_is_decided_while_every_point_is_within_the_others_intervals(
    values, kind
) -> None:
    half = max(values) - min(values)  # each difference's interval is half * sqrt(2) wide each way
    result = check(_curve(values, half), "fid", {"kind": kind, "axis": "sampler.num_steps"})
    assert result.verdict == "undetermined"


def _keyed(timestep: str, fid: float, key: str, samples: int) -> dict:
    protocol = {"fid": {"direction": "min", "key": key, "num_samples": samples}}
    return {**_row(timestep, fid, 0.1), "protocol": protocol}


def test_only_rows_of_the_main_protocol_key_are_compared() -> None:
    """Implicit 20 and explicit 25 share key A; explicit 10 was measured with key B: the finding
    compares 20 with 25 (key A, carried by most rows) and says which key it used."""
    rows = [_keyed("implicit", 20.0, "A", 1000), _keyed("explicit", 25.0, "A", 1000)]
    rows.append(_keyed("explicit", 10.0, "B", 100))
    result = check(pd.DataFrame(rows), "fid", AS_GOOD)
    assert result.verdict == "holds" and "protocol key A: 2 of 3 trials" in result.detail
    assert nearest_value(pd.DataFrame(rows), {"model.timestep": "explicit"}, "fid")[1] == 25.0
    one_key = check(pd.DataFrame(rows[:2]), "fid", AS_GOOD)
    assert "protocol key" not in one_key.detail


def test_a_tie_in_rows_goes_to_the_protocol_with_more_samples() -> None:
    rows = [_keyed("implicit", 20.0, "N100", 100), _keyed("explicit", 25.0, "N5000", 5000)]
    rows += [_keyed("implicit", 30.0, "N5000", 5000), _keyed("explicit", 40.0, "N100", 100)]
    kept, note = comparable(pd.DataFrame(rows), "fid")
    assert sorted(kept["fid"]) == [25.0, 30.0] and "protocol key N5000" in note
    assert check(pd.DataFrame(rows), "fid", AS_GOOD).verdict == "does not hold"  # 30 vs 25


def test_each_side_is_tested_against_its_own_bound() -> None:
    """b = 11 with [9.5, 11.0] reaches below a = 10 with [9.9, 10.1]: a is not decided no worse
    at margin 0 (the symmetric half-widths said it was)."""
    rows = [
        _row("implicit", 10.0, fid_ci_low=9.9, fid_ci_high=10.1),
        _row("explicit", 11.0, fid_ci_low=9.5, fid_ci_high=11.0),
    ]
    assert check(pd.DataFrame(rows), "fid", {**AS_GOOD, "margin": 0.0}).verdict == "undetermined"
    rows[1].update(fid_ci_low=10.95, fid_ci_high=12.5)  # now b's interval stays above a's
    assert check(pd.DataFrame(rows), "fid", {**AS_GOOD, "margin": 0.0}).verdict == "holds"


ENDS = st.floats(0, 10)


@settings(max_examples=100, deadline=None)
@given(st.floats(-100, 100), ENDS, ENDS, st.floats(-100, 100), ENDS, ENDS)
def test_the_unpaired_interval_combines_the_sides_that_reach_towards_each_end(a, a_lo, a_hi, b, b_lo, b_hi):
    """a - b in [(a - b) - hypot(a_below, b_above), (a - b) + hypot(a_above, b_below)]; b - a is
    its mirror image; with symmetric intervals both ends are the old root-sum-square."""
    ra = pd.Series(_row("implicit", a, fid_ci_low=a - a_lo, fid_ci_high=a + a_hi))
    rb = pd.Series(_row("explicit", b, fid_ci_low=b - b_lo, fid_ci_high=b + b_hi))
    d, back = difference(ra, rb, "fid"), difference(rb, ra, "fid")
    assert d.low == pytest.approx((a - b) - math.hypot(a_lo, b_hi), abs=1e-6)
    assert d.high == pytest.approx((a - b) + math.hypot(a_hi, b_lo), abs=1e-6)
    assert back.low == pytest.approx(-d.high, abs=1e-6) and back.high == pytest.approx(-d.low, abs=1e-6)
    ra = pd.Series(_row("implicit", a, a_lo))
    rb = pd.Series(_row("explicit", b, b_lo))
    assert difference(ra, rb, "fid").half == pytest.approx(math.hypot(a_lo, b_lo), abs=1e-6)


_EVERY_KIND = [
    AS_GOOD,
    {"kind": "interior_optimum", "axis": "sampler.num_steps"},
    {"kind": "gap_shrinks", "axis": "sampler.num_steps", "key": "model.timestep", "better": "explicit"},
    {"kind": "improves_along", "axis": "sampler.num_steps"},
    {"kind": "worsens_along", "axis": "sampler.num_steps"},
]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(_EVERY_KIND), st.sampled_from([{"sampler.num_steps": 3}, {"model.timestep": "none"}]))
def test_a_where_that_matches_no_row_is_undetermined_for_every_kind(finding, where) -> None:
    """No row left (a value no trial has): every kind says undetermined, none raises, and the
    emptied table keeps its columns (an empty row mask is not a column selection)."""
    table = _curve([30.0, 20.0, 25.0], 1.0)
    table = pd.concat([table, table.assign(**{"model.timestep": "explicit"})], ignore_index=True)
    assert list(select(table, where).columns) == list(table.columns)
    assert list(select(select(table, where), where).columns) == list(table.columns)
    assert check(table, "fid", {**finding, "where": where}).verdict == "undetermined"
