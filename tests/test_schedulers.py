"""Property tests for the kappa schedulers: endpoints, monotonicity, derivatives, validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.registry import UnknownNameError
from models.schedulers import SCHEDULERS, Cubic, KappaScheduler, Polynomial, build_scheduler

# The paper's table (PAPER.md section 2), written with the math module so it is independent of torch.
CLOSED_FORMS = {
    "linear": lambda t: t,
    "quadratic": lambda t: t * t,
    "polynomial": lambda t: t * t,  # default n = 2
    "root": lambda t: math.sqrt(t),
    "cosine": lambda t: 1 - math.cos(math.pi * t / 2),
    "sine": lambda t: math.sin(math.pi * t / 2),
    "arccos": lambda t: 1 - (2 / math.pi) * math.acos(t),
    "arcsin": lambda t: (2 / math.pi) * math.asin(t),
    "cubic": lambda t: -2 * t**3 + 3 * t**2 + 2.0 * (t**3 - 2 * t**2 + t) + 0.5 * (t**3 - t**2),
}

POLY_NS = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]
CUBIC_ABS = [(0.0, 0.0), (1.0, 1.0), (2.0, 0.5), (3.0, 3.0), (0.5, 2.5), (0.0, 3.0)]


def all_schedulers() -> list[tuple[str, KappaScheduler]]:
    cases = [(name, SCHEDULERS[name]()) for name in SCHEDULERS]
    cases += [(f"polynomial(n={n})", Polynomial(n=n)) for n in POLY_NS]
    cases += [(f"cubic(a={a},b={b})", Cubic(a=a, b=b)) for a, b in CUBIC_ABS]
    return cases


CASES = all_schedulers()
IDS = [name for name, _ in CASES]
SCHEDS = [s for _, s in CASES]


def test_every_paper_scheduler_is_registered():
    assert set(CLOSED_FORMS) <= set(SCHEDULERS.names())


@pytest.mark.parametrize("scheduler", SCHEDS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_endpoints(scheduler, dtype):
    kappa = scheduler.kappa(torch.tensor([0.0, 1.0], dtype=dtype))
    assert kappa.dtype == dtype
    assert kappa[0].item() == pytest.approx(0.0, abs=1e-7)
    assert kappa[1].item() == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("scheduler", SCHEDS, ids=IDS)
def test_monotone_and_in_unit_interval(scheduler):
    t = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    kappa = scheduler.kappa(t)
    assert torch.all(kappa.diff() >= -1e-12), "kappa must be non-decreasing"
    assert kappa.min() >= -1e-12 and kappa.max() <= 1 + 1e-12
    assert torch.all(scheduler.d_kappa(t[1:-1]) >= -1e-12)


@pytest.mark.parametrize("scheduler", SCHEDS, ids=IDS)
def test_d_kappa_matches_central_differences(scheduler):
    # Away from the endpoints, where root/arccos/arcsin/t^n (n < 1) have unbounded derivatives.
    t = torch.linspace(0.02, 0.98, 97, dtype=torch.float64)
    h = 1e-6
    fd = (scheduler.kappa(t + h) - scheduler.kappa(t - h)) / (2 * h)
    torch.testing.assert_close(scheduler.d_kappa(t), fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_registered_schedulers_follow_the_paper_table(name):
    scheduler = SCHEDULERS[name]()
    ts = [i / 50 for i in range(51)]
    got = scheduler.kappa(torch.tensor(ts, dtype=torch.float64)).tolist()
    want = [CLOSED_FORMS[name](t) for t in ts]
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("scheduler", SCHEDS, ids=IDS)
def test_call_and_rate(scheduler):
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    kappa_t, d_kappa_t = scheduler(t)
    torch.testing.assert_close(kappa_t, scheduler.kappa(t))
    torch.testing.assert_close(d_kappa_t, scheduler.d_kappa(t))
    torch.testing.assert_close(scheduler.rate(t), d_kappa_t / (1 - kappa_t))


@settings(deadline=None, max_examples=25)
@given(a=st.floats(0.0, 3.0), b=st.floats(0.0, 3.0))
def test_cubic_honours_end_slopes(a, b):
    """kappa'(0) = a and kappa'(1) = b, checked on kappa itself (the reference ignored a and b)."""
    cubic = Cubic(a=a, b=b)
    h = 1e-7
    t = torch.tensor([0.0, h, 1.0 - h, 1.0], dtype=torch.float64)
    kappa = cubic.kappa(t)
    assert ((kappa[1] - kappa[0]) / h).item() == pytest.approx(a, abs=1e-5)
    assert ((kappa[3] - kappa[2]) / h).item() == pytest.approx(b, abs=1e-5)
    d = cubic.d_kappa(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert d.tolist() == pytest.approx([a, b], abs=1e-12)
    # And the endpoints hold for every (a, b).
    assert kappa[0].item() == 0.0 and kappa[3].item() == pytest.approx(1.0, abs=1e-12)
    assert torch.all(cubic.kappa(torch.linspace(0, 1, 2001, dtype=torch.float64)).diff() >= -1e-12)


def test_cubic_parameters_reach_the_registry():
    s = build_scheduler("cubic", a=1.0, b=3.0)
    assert s.d_kappa(torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == pytest.approx([1.0, 3.0])


@settings(deadline=None, max_examples=25)
@given(n=st.floats(0.05, 8.0), t=st.floats(0.0, 1.0))
def test_polynomial_is_t_to_the_n(n, t):
    got = Polynomial(n=n).kappa(torch.tensor([t], dtype=torch.float64)).item()
    assert got == pytest.approx(t**n, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(
    "a, b", [(-0.1, 1.0), (1.0, -0.1), (3.5, 1.0), (1.0, 3.01), (math.nan, 1.0), (1.0, math.inf)]
)
def test_invalid_cubic_raises(a, b):
    with pytest.raises(ValueError, match="cubic"):
        Cubic(a=a, b=b)
    with pytest.raises(ValueError):
        build_scheduler("cubic", a=a, b=b)


@pytest.mark.parametrize("n", [0.0, -1.0, -0.5, math.nan])
def test_invalid_polynomial_raises(n):
    with pytest.raises(ValueError, match="polynomial"):
        Polynomial(n=n)
    with pytest.raises(ValueError):
        build_scheduler("polynomial", n=n)


@pytest.mark.parametrize("name", ["linaer", "cos", "", "Linear"])
def test_unknown_name_lists_known_names(name):
    with pytest.raises(UnknownNameError) as info:
        build_scheduler(name)
    message = str(info.value)
    assert repr(name) in message
    for known in SCHEDULERS.names():
        assert known in message
    assert isinstance(info.value, KeyError)


@settings(deadline=None, max_examples=30)
@given(t1=st.floats(0.0, 1.0), t2=st.floats(0.0, 1.0), index=st.integers(0, len(SCHEDS) - 1))
def test_monotone_on_random_pairs(t1, t2, index):
    scheduler = SCHEDS[index]
    lo, hi = sorted((t1, t2))
    k = scheduler.kappa(torch.tensor([lo, hi], dtype=torch.float64))
    assert k[0] <= k[1] + 1e-12
    assert k[0] >= -1e-12 and k[1] <= 1 + 1e-12
