"""The ledger under refusals, times that go back and refunds: no window ever overspends (privacy.md §1)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import ConfigError, Ledger
from dp.spec import exact_epsilon
from tests.dp.conftest import within


def assert_no_window_overspends(accepted: list[tuple[float, Fraction]], eps_window: float, window_s: float) -> None:
    for start, _ in accepted:
        total = sum((c for s, c in accepted if within(s, start, window_s)), Fraction(0))
        assert total <= exact_epsilon(eps_window), (start, accepted)


def test_a_refused_spend_at_a_later_time_does_not_forget_the_spends_before_it():
    ledger = Ledger(eps_window=1.0, window_s=10.0)
    assert ledger.try_spend(0.0, 1.0)
    assert not ledger.try_spend(100.0, 2.0)  # refused: it must not expire the spend at 0.0 for good
    assert not ledger.try_spend(5.0, 1.0)  # 0.0 and 5.0 lie in one window of 10 s
    assert ledger.spent(5.0) == 1.0


@settings(max_examples=300, deadline=None)
@given(
    eps_window=st.sampled_from([0.3, 1.0, 2.5]),
    window_s=st.sampled_from([0.5, 1.0, 10.0]),
    steps=st.lists(st.tuples(st.floats(-20, 20, allow_nan=False),
                             st.sampled_from([0.1, 0.25, 0.5, 1.0, 3.0])), max_size=40),
)
def test_no_window_overspends_whatever_the_times_and_costs_asked(eps_window, window_s, steps):
    """Times that jump ahead and come back (to a spend no earlier than the last one), costs above the budget:
    the accepted spends still fit every closed window."""
    ledger = Ledger(eps_window=eps_window, window_s=window_s)
    accepted: list[tuple[float, Fraction]] = []
    for t, eps in steps:
        try:
            ok = ledger.try_spend(t, eps)
        except ConfigError:
            assert accepted and t < accepted[-1][0]  # only a time before the last spend is an error
            continue
        if ok:
            accepted.append((t, exact_epsilon(eps)))
    assert_no_window_overspends(accepted, eps_window, window_s)


def test_a_refund_gives_back_only_the_latest_spend_and_only_once():
    ledger = Ledger(eps_window=2.0, window_s=10.0)
    assert ledger.try_spend(1.0, 0.5) and ledger.try_spend(1.0, 0.5)  # two releases at one instant
    assert ledger.refund(1.0, 0.5)
    assert not ledger.refund(1.0, 0.5)  # the first one's release may have left: it stays spent
    assert ledger.spent(1.0) == 0.5
    assert ledger.try_spend(2.0, 0.5)
    assert ledger.refund(2.0, 0.5)
    assert not ledger.refund(1.0, 0.5)  # the spend before a refunded one is not refundable either
    assert ledger.spent(2.0) == 0.5


@settings(max_examples=300, deadline=None)
@given(
    eps_window=st.sampled_from([0.5, 1.0, 2.5]),
    steps=st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.sampled_from([0.25, 0.5, 1.0]),
                             st.integers(0, 3)), max_size=40),
)
def test_repeated_refunds_never_give_back_a_released_frame(eps_window, steps):
    """A caller that refunds a released frame's spend (or asks again) gets False: only the spend of its own
    refused frame, the latest, comes back."""
    window_s = 5.0
    ledger = Ledger(eps_window=eps_window, window_s=window_s)
    t, released, latest = 0.0, [], None
    for dt, eps, n_refunds in steps:
        t += dt
        if ledger.try_spend(t, eps):
            latest = (t, eps)
            released.append((t, exact_epsilon(eps)))
        for _ in range(n_refunds):  # refunds of the latest spend, or of earlier ones: all released
            for s, c in list(released):
                if ledger.refund(s, float(c)):
                    released.remove((s, c))
                    assert (s, float(c)) == latest
                    latest = None
    assert_no_window_overspends(released, eps_window, window_s)


def test_the_budget_at_a_time_that_is_not_a_number_is_a_config_error():
    ledger = Ledger(eps_window=1.0, window_s=10.0)
    assert ledger.try_spend(0.0, 1.0)
    for bad in (float("nan"), "0", None):
        with pytest.raises(ConfigError, match="t_s"):
            ledger.remaining(bad)  # NaN used to match no spend: "the whole budget is left"
    assert ledger.remaining(5.0) == 0.0
