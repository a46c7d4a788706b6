"""The w-event ledger: no window ever overspends, and nothing is refused that fits (privacy.md §1)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import ConfigError, Ledger
from dp.spec import exact_epsilon
from tests.dp.conftest import within

eps_values = st.sampled_from([0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0, 1.5, 2.0])


@settings(max_examples=300, deadline=None)
@given(
    eps_window=st.sampled_from([0.3, 1.0, 2.5, 4.0]),
    window_s=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    steps=st.lists(st.tuples(st.floats(0, 4, allow_nan=False), eps_values), max_size=60),
)
def test_no_sequence_of_releases_overspends_any_window(eps_window, window_s, steps):
    ledger = Ledger(eps_window=eps_window, window_s=window_s)
    t = 0.0
    accepted: list[tuple[float, Fraction]] = []
    for dt, eps in steps:
        t += dt
        before = [(s, c) for s, c in accepted if within(t, s, window_s)]
        fits = sum((c for _, c in before), Fraction(0)) + exact_epsilon(eps) <= exact_epsilon(eps_window)
        ok = ledger.try_spend(t, eps)
        assert ok == fits  # refuses exactly what would overspend the window ending now
        if ok:
            accepted.append((t, exact_epsilon(eps)))
    # every closed window [a, a + W] starting at an accepted spend stays within budget
    for start, _ in accepted:
        total = sum((c for s, c in accepted if within(s, start, window_s)), Fraction(0))
        assert total <= exact_epsilon(eps_window)


@settings(max_examples=300, deadline=None)
@given(
    eps_window=st.sampled_from([0.3, 1.0, 2.5, 4.0]),
    window_s=st.sampled_from([0.5, 1.0, 3.0, 10.0]),
    steps=st.lists(st.tuples(st.floats(0, 4, allow_nan=False), eps_values, st.booleans()), max_size=60),
)
def test_refunds_of_unreleased_frames_never_let_the_releases_overspend(eps_window, window_s, steps):
    """A frame refused after its spend is refunded (the worker's path): the spends that stay, the releases,
    still fit every window, and each refusal gives exactly its own spend back."""
    ledger = Ledger(eps_window=eps_window, window_s=window_s)
    t = 0.0
    released: list[tuple[float, Fraction]] = []
    for dt, eps, refused in steps:
        t += dt
        if not ledger.try_spend(t, eps):
            continue
        if refused:
            assert ledger.refund(ledger.last_spend_s, eps)
        else:
            released.append((t, exact_epsilon(eps)))
        in_window = sum((c for s, c in released if within(t, s, window_s)), Fraction(0))
        assert ledger.spent(t) == pytest.approx(float(in_window))
    for start, _ in released:
        total = sum((c for s, c in released if within(s, start, window_s)), Fraction(0))
        assert total <= exact_epsilon(eps_window)


def test_decimal_budgets_hold_exactly_their_share():
    ledger = Ledger(eps_window=0.3, window_s=10.0)
    assert [ledger.try_spend(i * 0.01, 0.1) for i in range(4)] == [True, True, True, False]


def test_budget_returns_after_the_window_passes():
    ledger = Ledger(eps_window=1.0, window_s=2.0)
    assert ledger.try_spend(0.0, 1.0)
    assert not ledger.try_spend(2.0, 0.5)  # closed window: the spend at 0.0 still counts at 2.0
    assert ledger.try_spend(2.001, 0.5)
    assert ledger.spent(2.001) == 0.5 and ledger.remaining(2.001) == 0.5


def test_state_round_trips_through_a_dict():
    ledger = Ledger(eps_window=1.0, window_s=5.0)
    ledger.try_spend(1.0, 0.3)
    ledger.try_spend(2.0, 0.3)
    back = Ledger.from_dict(ledger.to_dict())
    assert back.spent(2.0) == ledger.spent(2.0)
    assert not back.try_spend(2.5, 0.5) and back.try_spend(2.5, 0.4)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"eps_window": 0, "window_s": 1}, "eps_window"),
    ({"eps_window": 1, "window_s": 0}, "window_s"),
    ({"eps_window": 1, "window_s": float("nan")}, "window_s"),
])
def test_bad_ledgers_are_refused(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Ledger(**kwargs)


def test_time_going_backwards_is_refused():
    ledger = Ledger(eps_window=1.0, window_s=1.0)
    ledger.try_spend(5.0, 0.1)
    with pytest.raises(ConfigError, match="monotonic"):
        ledger.try_spend(4.0, 0.1)


def test_reconfigure_keeps_spends_and_applies_the_new_limit():
    ledger = Ledger(eps_window=1.0, window_s=10.0)
    assert ledger.try_spend(0.0, 0.6)
    ledger.reconfigure(0.8, 10.0)
    assert not ledger.try_spend(1.0, 0.3)  # 0.6 already spent counts against the new limit
    assert ledger.try_spend(1.0, 0.2)
    assert ledger.last_spend_s == 1.0
    with pytest.raises(ConfigError, match="eps_window"):
        ledger.reconfigure(0.0, 10.0)


def test_refund_takes_back_exactly_the_latest_spend():
    ledger = Ledger(eps_window=2.0, window_s=10.0)
    assert ledger.try_spend(1.0, 1.0) and ledger.try_spend(2.0, 1.0)
    assert not ledger.try_spend(3.0, 1.0)
    assert not ledger.refund(1.0, 1.0)  # not the latest spend
    assert not ledger.refund(2.0, 0.5)  # not its cost
    assert ledger.refund(2.0, 1.0)
    assert not ledger.refund(2.0, 1.0)  # only once
    assert ledger.spent(3.0) == 1.0 and ledger.try_spend(3.0, 1.0)
    with pytest.raises(ConfigError):  # spends still may not go back in time
        ledger.try_spend(2.5, 0.1)


@pytest.mark.parametrize("spends", [[[0, "-5/1"]], [[0, "0/1"]], [[float("nan"), "1/10"]], [[100, "1/10"], [0, "1/10"]],
                                    [[1e400, "1/10"]], [["x", "1/10"]]])
def test_a_stored_state_that_would_break_the_budget_is_refused(spends):
    with pytest.raises(ConfigError, match="malformed"):
        Ledger.from_dict({"eps_window": 1.0, "window_s": 10.0, "spends": spends})


def test_the_exact_frame_cost_is_charged_not_its_float():
    from dp import PixelizeSpec

    # eps_pix + eps_layout as a float rounds below their exact sum: three releases would fit a window of
    # three float costs, two of the exact ones
    spec = PixelizeSpec(eps_pix=4.522949178819921, layout="private", eps_layout=4.19179)
    assert exact_epsilon(spec.eps_frame) < spec.eps_frame_exact
    window = float(3 * exact_epsilon(spec.eps_frame))
    ledger = Ledger(window, 10.0)
    assert sum(ledger.try_spend(t, spec.eps_frame_exact) for t in range(5)) == 2
    assert ledger.spent(4.0) == float(2 * spec.eps_frame_exact)


@pytest.mark.parametrize(("args", "kwargs"), [((True, 10.0), {}), (("4", "10"), {}), ((4.0, 10**400), {}),
                                              ((10**400, 1.0), {})])
def test_ledgers_of_the_wrong_types_are_config_errors(args, kwargs):
    with pytest.raises(ConfigError):
        Ledger(*args, **kwargs)


def test_spends_and_refunds_of_the_wrong_types_are_config_errors():
    ledger = Ledger(4.0, 10.0)
    assert ledger.try_spend(1.0, 1.0)
    for bad in (lambda: ledger.try_spend(None, 0.5), lambda: ledger.try_spend("5", 0.5),
                lambda: ledger.refund("x", 0.1), lambda: ledger.try_spend(2.0, Fraction(-1, 2))):
        with pytest.raises(ConfigError):
            bad()
