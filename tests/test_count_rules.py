"""Count rules (models.samplers.counts): the published sequences, the sources' own formulas, the
properties every rule keeps, and the config option that names a rule without moving any hash."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sampler_stubs import (  # noqa: F401  (one_thread: an autouse fixture)
    MASK,
    B,
    L,
    RandomNet,
    newly_unmasked,
    one_thread,
    partly_given,
    run,
)

from harness.config.trial import OMITTED_AT_DEFAULT, ConfigError, build_trial
from harness.run.trial import sampling_settings
from models.registry import UnknownNameError
from models.samplers import COUNT_RULES, UNMASK_SCHEDULES, HaltonSampler, MaskGITSampler, commit_counts
from models.samplers.counts import cumulative_counts, reference_counts

RULES = sorted(COUNT_RULES)
SCHEDULES = sorted(UNMASK_SCHEDULES)

# --- the published sequences ---------------------------------------------------------------------------


def test_reference_rule_gives_the_reference_codes_sequence():
    """1,024 tokens, 20 steps, linear: the paper's reference code (valeoai MaskGIT-pytorch adap_sche)."""
    want = [1, 5, 11, 16, 22, 27, 32, 38, 43, 49, 54, 59, 65, 70, 75, 81, 86, 92, 97, 101]
    assert reference_counts("linear", 20, 1024) == want
    assert commit_counts("reference", "linear", 20, 1024) == want


def test_maskgit_rule_gives_googles_sequence():
    """256 tokens, 8 steps, cosine: Google's MaskGIT (parallel_decode's mask_len)."""
    assert cumulative_counts("cosine", 8, 256) == [5, 15, 24, 31, 39, 45, 48, 49]


# --- the sources' formulas, transcribed ------------------------------------------------------------


def adap_sche(schedule: str, step: int, num_tokens: int) -> list[int]:
    """valeoai MaskGIT-pytorch Trainer/vit.py ``adap_sche``, written out with its own expressions."""
    r = torch.linspace(1, 0, step)
    val_to_mask = {
        "root": lambda: 1 - (r**0.5),
        "linear": lambda: 1 - r,
        "square": lambda: 1 - (r**2),
        "cosine": lambda: torch.cos(r * math.pi * 0.5),
        "arccos": lambda: torch.arccos(r) / (math.pi * 0.5),
    }[schedule]()
    sche = (val_to_mask / val_to_mask.sum()) * num_tokens
    sche = sche.round()
    sche[sche == 0] = 1
    sche[-1] += num_tokens - sche.sum()
    return sche.int().tolist()


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_reference_rule_is_adap_sche_wherever_adap_sche_runs(schedule):
    """Equal wherever the reference's counts are a valid schedule (every count >= 1)."""
    compared = 0
    for num_tokens in (16, 64, 100, 256, 1024):
        for steps in range(2, min(num_tokens, 100) + 1):
            theirs = adap_sche(schedule, steps, num_tokens)
            if min(theirs) >= 1:
                assert reference_counts(schedule, steps, num_tokens) == theirs, (steps, num_tokens)
                compared += 1
    assert compared > 200


def googles_loop(schedule: str, n: int, num_tokens: int) -> list[int]:
    """Google's parallel_decode count loop with its own clamp, max(1, min(masked - 1, mask_len));
    w in float32 as in its JAX code, read from our schedule functions."""
    counts, masked = [], num_tokens
    for k in range(n - 1):
        gamma = UNMASK_SCHEDULES[schedule](torch.tensor([(k + 1) / n])).clamp(1e-6, 1.0)
        mask_len = int(torch.floor(torch.tensor(float(num_tokens)) * gamma))
        mask_len = max(1, min(masked - 1, mask_len))
        counts.append(masked - mask_len)
        masked = mask_len
    return [*counts, masked]


@settings(deadline=None, max_examples=200)
@given(schedule=st.sampled_from(SCHEDULES), N=st.integers(1, 3000), data=st.data())
def test_maskgit_rule_is_googles_wherever_google_commits_every_step(schedule, N, data):
    """Its lower clamp n - k - 1 (Google's: 1) only binds where Google's would commit nothing."""
    n = data.draw(st.integers(1, min(N, 80)))
    theirs = googles_loop(schedule, n, N)
    if min(theirs) >= 1:
        assert cumulative_counts(schedule, n, N) == theirs
    else:
        assert theirs.count(0) > 0 and min(cumulative_counts(schedule, n, N)) >= 1


def test_googles_clamp_can_commit_nothing():
    """Why the lower clamp is n - k - 1: with n near N Google's rule makes empty steps (root w
    falls slowly near 1: 1 - sqrt(x) ~ (1 - x) / 2)."""
    assert googles_loop("root", 3, 3) == [2, 0, 1]
    assert cumulative_counts("root", 3, 3) == [1, 1, 1]


# --- properties of every rule ------------------------------------------------------------------------


@settings(deadline=None, max_examples=300)
@given(
    rule=st.sampled_from(RULES), schedule=st.sampled_from(SCHEDULES), N=st.integers(1, 5000), data=st.data()
)
def test_every_rule_partitions_the_tokens_into_nonempty_steps(rule, schedule, N, data):
    n = data.draw(st.integers(1, min(N, 128)))
    counts = commit_counts(rule, schedule, n, N)
    assert len(counts) == n
    assert sum(counts) == N
    assert min(counts) >= 1
    assert all(isinstance(c, int) for c in counts)


@settings(deadline=None, max_examples=300)
@given(
    rule=st.sampled_from(["floor", "reference"]),
    schedule=st.sampled_from(SCHEDULES),
    N=st.integers(2, 5000),
    data=st.data(),
)
def test_share_rules_are_monotone_before_the_last_step(rule, schedule, N, data):
    """The shares of increasing weights, floored or rounded, never fall; the last step takes the
    remainder, which may be smaller (the maskgit rule's floors jitter: not monotone)."""
    n = data.draw(st.integers(2, min(N, 128)))
    counts = commit_counts(rule, schedule, n, N)
    assert all(a <= b for a, b in zip(counts[:-2], counts[1:-1], strict=True)), counts


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_refuses_impossible_steps(rule):
    for n, N in ((0, 10), (11, 10)):
        with pytest.raises(ValueError, match="num_steps"):
            commit_counts(rule, "cosine", n, N)
    assert commit_counts(rule, "cosine", 1, 37) == [37]


def test_the_maskgit_rule_is_not_monotone():
    counts = cumulative_counts("cosine", 24, 256)
    assert counts[-8:] == [14, 16, 15, 16, 17, 16, 17, 16]


# --- the samplers commit what the rule says ------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sampler_class", [MaskGITSampler, HaltonSampler], ids=["maskgit", "halton"])
@pytest.mark.parametrize("num_masked", [L, 11])
def test_samplers_commit_exactly_the_rules_counts(rule, sampler_class, num_masked):
    n = 6
    x_init = partly_given(num_masked=num_masked) if num_masked < L else None
    sampler = sampler_class(num_steps=n, schedule="square", counts=rule)
    out = run(sampler, RandomNet(), x_init=x_init, return_trajectory=True)
    counts = commit_counts(rule, "square", n, num_masked)
    assert out.nfe == n
    for k, (before, after) in enumerate(zip(out.trajectory, out.trajectory[1:], strict=False)):
        assert newly_unmasked(before, after).sum(dim=1).tolist() == [counts[k]] * B
    assert torch.all(out.tokens != MASK)


@pytest.mark.parametrize("sampler_class", [MaskGITSampler, HaltonSampler])
def test_an_unknown_rule_is_refused_by_the_sampler(sampler_class):
    with pytest.raises(UnknownNameError, match="count rule 'flor'.*'floor'"):
        sampler_class(counts="flor")


# --- the config option ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "bad", "choices"),
    [
        ("maskgit.counts", "flor", RULES),
        ("halton.counts", "referense", RULES),
        ("halton.schedule", "arcos", SCHEDULES),
    ],
)
def test_the_config_refuses_an_unknown_name_naming_field_value_and_choices(key, bad, choices):
    family, field = key.split(".")
    with pytest.raises(ConfigError) as info:
        build_trial({"sampler": {family: {field: bad}}})
    message = str(info.value)
    assert f"sampler.{key}" in message and repr(bad) in message
    assert all(repr(name) in message for name in choices), message


@pytest.mark.parametrize(("key", "other"), [("sampler.maskgit.counts", "reference")])
def test_a_sampler_option_added_later_moves_neither_hash_nor_folder_at_its_default(key, other):
    family, field = key.split(".")[1:]
    plain = build_trial({"sampler": {"name": family}})
    at_default = build_trial({"sampler": {"name": family, family: {field: OMITTED_AT_DEFAULT[key]}}})
    changed = build_trial({"sampler": {"name": family, family: {field: other}}})
    assert at_default.trial_hash() == plain.trial_hash()
    assert field not in sampling_settings(plain) and sampling_settings(at_default) == sampling_settings(plain)
    assert changed.trial_hash() != plain.trial_hash()
    assert changed.training_hash() == plain.training_hash()  # a sampler option: the same checkpoint
    assert sampling_settings(changed)[field] == other


def test_the_halton_section_moves_no_hash_of_another_sampler():
    plain = build_trial({"sampler": {"name": "maskgit"}})
    assert "halton" not in plain.identity()["sampler"]
    assert build_trial({"sampler": {"name": "maskgit", "halton": {"counts": "floor"}}}).trial_hash() != (
        plain.trial_hash()
    )
    halton = build_trial({"sampler": {"name": "halton"}})
    assert sampling_settings(halton)["sampler"] == "halton"
