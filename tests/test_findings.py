"""Paper-vs-ours checks: each finding kind on tables where it holds, where it fails, and unmeasured."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.config.study import load_study
from harness.config.trial import ConfigError
from reports.findings import check, difference, nearest_value, paper_section

REPO = Path(__file__).resolve().parents[1]
FID = {"fid": {"direction": "min"}}


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{"status": "finished", "nfe": 8.0, "protocol": FID, **r} for r in rows])


def _curve(values: dict[float, float], axis: str = "sampler.temperature", **fixed) -> list[dict]:
    return [{axis: x, "fid": y, **fixed} for x, y in values.items()]


def test_interior_optimum_needs_every_method_to_be_u_shaped() -> None:
    u = _curve({0.6: 30, 0.8: 20, 1.0: 25}, **{"sampler.name": "euler"})
    finding = {"kind": "interior_optimum", "axis": "sampler.temperature"}
    assert check(_table(u), "fid", finding).verdict == "holds"
    edge = _curve({0.6: 30, 0.8: 25, 1.0: 20}, **{"sampler.name": "maskgit"})
    result = check(_table(u + edge), "fid", finding)  # an edge optimum is not a U that failed
    assert result.verdict == "undetermined" and result.holds is None
    assert "extend the grid past sampler.temperature = 1" in result.detail
    two = check(_table(u[:2]), "fid", finding)  # two points cannot show a U
    assert two.verdict == "undetermined" and "3 or more values" in two.detail
    flat = [dict(r, fid_ci_low=r["fid"] - 8, fid_ci_high=r["fid"] + 8) for r in u]
    result = check(_table(flat), "fid", finding)  # the best is inside, but an edge is within its CI
    assert result.verdict == "undetermined" and "more sample seeds" in result.detail


def test_at_least_as_good_decides_beyond_the_intervals_only() -> None:
    rows = [
        {"model.timestep": "implicit", "fid": 10.5, "fid_ci_low": 10.0, "fid_ci_high": 11.0},
        {"model.timestep": "explicit", "fid": 10.0, "fid_ci_low": 9.5, "fid_ci_high": 10.5},
    ]
    finding = {"kind": "at_least_as_good", "key": "model.timestep", "a": "implicit", "b": "explicit"}
    result = check(_table(rows), "fid", finding)  # 0.5 worse, within hypot(0.5, 0.5)
    assert result.verdict == "undetermined" and "more sample seeds" in result.detail
    assert "+5.0 %" in result.detail  # the relative margin: comparable across protocols
    rows[0].update(fid=12.0, fid_ci_low=11.9, fid_ci_high=12.1)
    assert check(_table(rows), "fid", finding).verdict == "does not hold"
    rows[0].update(fid=8.0, fid_ci_low=7.9, fid_ci_high=8.1)
    assert check(_table(rows), "fid", finding).verdict == "holds"
    assert check(_table(rows[:1]), "fid", finding).verdict == "undetermined"


def _seeded(timestep: str, values: list[float], seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    """A row whose FID was measured on these sample seeds, with its Student-t interval."""
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = scipy.stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    protocol = {"fid": {"direction": "min", "sample_seeds": list(seeds), "per_seed": values}}
    row = {"model.timestep": timestep, "fid": mean, "fid_ci_low": mean - half, "fid_ci_high": mean + half}
    return {**row, "protocol": protocol}


def test_trials_sharing_sample_seeds_are_compared_by_paired_differences() -> None:
    """The seeds' noise is shared: ITM 0.5 better on every seed is decided, although the two
    intervals (each +- ~5) overlap; the same numbers on other seeds are not."""
    finding = {"kind": "at_least_as_good", "key": "model.timestep", "a": "implicit", "b": "explicit"}
    rows = [_seeded("implicit", [60.0, 62.0, 64.5]), _seeded("explicit", [60.5, 62.5, 65.0])]
    result = check(pd.DataFrame([{"status": "finished", "nfe": 8.0, **r} for r in rows]), "fid", finding)
    assert result.verdict == "holds" and "paired over sample seeds" in result.detail
    rows[1] = _seeded("explicit", [60.5, 62.5, 65.0], seeds=(3, 4, 5))
    result = check(pd.DataFrame([{"status": "finished", "nfe": 8.0, **r} for r in rows]), "fid", finding)
    assert result.verdict == "undetermined" and "CIs combined" in result.detail


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100), min_size=2, max_size=8),
    st.lists(st.floats(-100, 100), min_size=2, max_size=8),
)
def test_the_paired_difference_is_the_t_interval_of_the_per_seed_differences(a, b) -> None:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    ra, rb = (
        pd.Series(_seeded("implicit", a, tuple(range(n)))),
        pd.Series(_seeded("explicit", b, tuple(range(n)))),
    )
    d = difference(ra, rb, "fid")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert d.paired and d.value == pytest.approx(statistics.fmean(diffs), abs=1e-9)
    expected = scipy.stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
    assert d.half == pytest.approx(expected, rel=1e-3, abs=1e-9)
    swapped = difference(rb, ra, "fid")  # antisymmetric, same interval
    assert swapped.value == pytest.approx(-d.value, abs=1e-9) and swapped.half == pytest.approx(d.half)


def test_gap_shrinks_and_along_axis() -> None:
    rows = _curve({2: 200, 32: 50}, "sampler.num_steps", **{"sampler.euler.argmax_fill": False})
    rows += _curve({2: 100, 32: 48}, "sampler.num_steps", **{"sampler.euler.argmax_fill": True})
    gap = {
        "kind": "gap_shrinks",
        "axis": "sampler.num_steps",
        "key": "sampler.euler.argmax_fill",
        "better": True,
    }
    assert check(_table(rows), "fid", gap).holds is True
    widening = [
        dict(r, fid=r["fid"] - 60) if r["sampler.num_steps"] == 2 and not r[gap["key"]] else r for r in rows
    ]
    widening = [dict(r, fid=10.0) if r["sampler.num_steps"] == 32 and r[gap["key"]] else r for r in widening]
    assert check(_table(widening), "fid", gap).verdict == "does not hold"  # 40 at 2 steps and at 32
    falls = {
        "kind": "improves_along",
        "axis": "sampler.num_steps",
        "where": {"sampler.euler.argmax_fill": False},
    }
    assert check(_table(rows), "fid", falls).holds is True
    worse = {
        "kind": "worsens_along",
        "axis": "sampler.num_steps",
        "where": {"sampler.euler.argmax_fill": False},
    }
    assert check(_table(rows), "fid", worse).holds is False


def test_directions_flip_for_higher_is_better_metrics() -> None:
    rows = [
        {"model.timestep": "implicit", "precision": 0.9},
        {"model.timestep": "explicit", "precision": 0.5},
    ]
    table = _table(rows).assign(protocol=[{"precision": {"direction": "max"}}] * 2)
    finding = {"kind": "at_least_as_good", "key": "model.timestep", "a": "implicit", "b": "explicit"}
    assert check(table, "precision", finding).holds is True


def test_nearest_setting_and_the_section() -> None:
    rows = _curve({2: 150, 4: 100, 16: 60}, "sampler.num_steps", **{"sampler.euler.argmax_fill": False})
    used, value = nearest_value(
        _table(rows), {"sampler.num_steps": 5, "sampler.euler.argmax_fill": False}, "fid"
    )
    assert used["sampler.num_steps"] == 4 and value == 100
    reference = {
        "source": "Figure 3",
        "points": [{"settings": {"sampler.num_steps": 5, "sampler.euler.argmax_fill": False}, "fid": 200}],
        "findings": [{"kind": "improves_along", "axis": "sampler.num_steps", "text": "FID falls"}],
    }
    text = "\n".join(paper_section(_table(rows), "fid", reference))
    assert "## Paper vs ours" in text and "200 (read off the figure)" in text
    assert "| FID falls | holds |" in text


def test_every_mini_paper_study_validates_with_its_reference(tmp_path) -> None:
    studies = sorted((REPO / "search_spaces" / "paper" / "mini").glob("*.yaml"))
    studies = [s for s in studies if s.name != "base.yaml"]
    assert len(studies) >= 10
    for path in studies:
        spec = load_study(path)
        assert spec.reference_data.get("source"), path.name
        assert spec.base_config["data"]["name"] == "animals"  # the chained mini base applied
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"name: bad\nbase: {REPO / 'search_spaces' / 'base.yaml'}\n"
        f"paper_reference: {REPO / 'search_spaces' / 'paper' / 'reference.yaml'}#fig3_nope\n"
    )
    with pytest.raises(ConfigError, match="fig3_nope"):
        load_study(bad)


def test_a_recipe_is_a_first_class_variant_under_the_space(tmp_path) -> None:
    from harness.config.recipes import RECIPES

    spec = load_study(REPO / "search_spaces" / "paper" / "mini" / "maskgit_vs_di.yaml")
    from harness.config.study import expand_grid

    trials = expand_grid(spec)
    recipe = [t for t in trials if t.recipe == "maskgit"]
    assert sorted(t.sampler.num_steps for t in recipe) == [4, 8, 16]  # the space sweeps the recipe
    for t in recipe:
        assert (t.train.corruption, t.train.scheduler, t.sampler.name) == ("maskgit", "cosine", "maskgit")
        assert t.sampler.maskgit.gumbel_scale == RECIPES["maskgit"].overrides["sampler.maskgit.gumbel_scale"]
    plain = next(t for t in trials if t.recipe is None and t.sampler.name == "maskgit")
    same = plain.model_copy(update={"recipe": "maskgit"})
    assert same.trial_hash() == plain.trial_hash()  # a label: identical settings are one trial
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"name: bad\nbase: {REPO / 'search_spaces' / 'base.yaml'}\nvariants: {{m: {{recipe: maskgti}}}}\n"
    )
    with pytest.raises(ConfigError, match="did you mean 'maskgit'"):
        load_study(bad)


def test_report_states_the_recipes_provenance_and_translation() -> None:
    from reports.study_report import _recipes_section

    table = pd.DataFrame([{"recipe": "maskgit"}, {"recipe": None}])
    text = "\n".join(_recipes_section(table))
    assert "Chang et al." in text and "sampler.cfg_scale = w + 1" in text
    assert _recipes_section(pd.DataFrame([{"recipe": None}])) == []


def test_paper_size_studies_mirror_the_mini_ones_and_plan_without_data(tmp_path) -> None:
    from harness.run.plan import make_plan
    from harness.run.store import CheckpointStore

    full = {p.name for p in (REPO / "search_spaces" / "paper" / "full").glob("*.yaml")}
    mini = {p.name for p in (REPO / "search_spaces" / "paper" / "mini").glob("*.yaml")}
    assert full == mini
    spec = load_study(REPO / "search_spaces" / "paper" / "full" / "main_result.yaml")
    assert spec.base_config["data"]["name"] == "shards" and spec.resources.gpu == 1
    plan = make_plan(spec, tmp_path / "s", CheckpointStore(tmp_path / "c"))  # no shard folder needed
    assert len(plan.trainings) == 1 and plan.train_flops > 1e20  # DiT-XL on 1,024 tokens, 400k steps


def test_gpu_studies_print_gpu_hours(capsys) -> None:
    import run_study

    study = REPO / "search_spaces" / "paper" / "full" / "main_result.yaml"
    assert run_study.main(["run", str(study), "--dry-run", "--gpu-tflops", "100"]) == 0
    out = capsys.readouterr().out
    hours = float(out.split("TFLOP (")[1].split(" GPU-h")[0].replace(",", ""))
    # 6 x params x 256 positions (DiT-XL/2: 2 x 2 patches of the 32 x 32 tokens) x 256 x 400k steps
    # at 100 TFLOP/s; DiT-XL/2 with a 4 x 16,385-way head has ~0.8e9 parameters: ~360 GPU-h
    assert 250 < hours < 450 and "at 100 TFLOP/s sustained per GPU" in out


def test_the_per_seed_key_is_the_one_trials_write() -> None:
    from harness.run import ledger
    from harness.tracking import schema

    assert ledger.PER_SEED == schema.PER_SEED


def test_at_least_as_good_is_a_non_inferiority_test_with_a_stated_margin() -> None:
    """A tie decides "holds" (a no worse than b by more than the margin, with 95% confidence), where
    "a better beyond the CIs" never could; a tighter margin leaves the same tie undetermined, and
    a worse by more than the margin, beyond the CIs, does not hold."""
    rows = [
        {"model.timestep": "implicit", "fid": 10.1, "fid_ci_low": 9.9, "fid_ci_high": 10.3},
        {"model.timestep": "explicit", "fid": 10.0, "fid_ci_low": 9.8, "fid_ci_high": 10.2},
    ]
    finding = {"kind": "at_least_as_good", "key": "model.timestep", "a": "implicit", "b": "explicit"}
    result = check(_table(rows), "fid", finding)  # 0.1 +- 0.28 worse, the margin 5 % of 10 = 0.5
    assert result.verdict == "holds" and "margin 0.5" in result.detail
    assert check(_table(rows), "fid", {**finding, "margin": 0.01}).verdict == "undetermined"
    rows[0].update(fid=10.8, fid_ci_low=10.7, fid_ci_high=10.9)  # 0.8 +- 0.22 worse: beyond 0.5
    assert check(_table(rows), "fid", finding).verdict == "does not hold"
    rows[0].update(fid=10.4, fid_ci_low=10.3, fid_ci_high=10.5)  # 0.4 +- 0.22: straddles the margin
    assert check(_table(rows), "fid", finding).verdict == "undetermined"


def test_an_undetermined_comparison_names_the_trials_more_seeds_would_decide() -> None:
    """Only a comparison undecided for its CIs asks for seeds, and it names the two trials it
    compared (not the other cells of the study) and how many paired seeds would reach the margin."""
    finding = {"kind": "at_least_as_good", "key": "model.timestep", "a": "implicit", "b": "explicit"}
    rows = [
        {**_seeded("implicit", [51.0, 49.0, 53.5, 50.0], (0, 1, 2, 3)), "trial_hash": "a1"},
        {**_seeded("explicit", [50.0, 50.5, 49.0, 50.2], (0, 1, 2, 3)), "trial_hash": "b1"},
        {**_seeded("explicit", [70.0, 71.0, 72.0, 69.0], (0, 1, 2, 3)), "trial_hash": "b2"},
    ]
    table = pd.DataFrame([{"status": "finished", "nfe": 8.0, **r} for r in rows])
    result = check(table, "fid", finding)
    assert result.verdict == "undetermined" and set(result.wants_seeds) == {"a1", "b1"}
    need = int(result.detail.split("about ")[1].split()[0])
    d = difference(table.iloc[0], table.iloc[1], "fid")
    margin = 0.05 * table.iloc[1]["fid"]
    # At the measured spread, `need` seeds bring the half-width to the distance from the margin.
    assert d.half * math.sqrt(4 / need) <= abs(margin - d.value) < d.half * math.sqrt(4 / (need - 1))
    rows[0] = {**_seeded("implicit", [31.0, 29.0, 33.5, 30.0], (0, 1, 2, 3)), "trial_hash": "a1"}
    decided = check(pd.DataFrame([{"status": "finished", **r} for r in rows]), "fid", finding)
    assert decided.verdict == "holds" and decided.wants_seeds == ()


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 50), st.floats(0.01, 100), st.floats(0.01, 100))
def test_seeds_to_reach_a_distance_shrink_the_interval_as_one_over_root_n(n, half, distance) -> None:
    from reports.findings import Difference

    need = Difference(0.0, half, True, n).seeds_to_reach(distance)
    assert need is not None and need > n
    assert half * math.sqrt(n / need) <= distance * (1 + 1e-9) or need == n + 1
    assert Difference(0.0, half, False, n).seeds_to_reach(distance) is None
