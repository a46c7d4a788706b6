"""The ledger across live changes of its window and budget, and across the store: a spend is accepted only
if the window ending at it, under the settings in force, holds no more than the budget (privacy.md §1),
counting every spend ever accepted, including those the ledger has since dropped."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import ConfigError, Ledger
from dp.spec import exact_epsilon
from tests.dp.conftest import within


def test_a_window_shrunk_and_grown_back_still_counts_the_spends_it_dropped():
    ledger = Ledger(eps_window=1.0, window_s=1.0)
    assert ledger.try_spend(0.0, 0.5)
    ledger.reconfigure(1.0, 0.5)
    assert ledger.try_spend(0.6, 0.5)  # the 0.5 s window [0.1, 0.6] holds 0.5: fits, and drops the spend at 0
    ledger.reconfigure(1.0, 1.0)
    # the 1 s window [-0.05, 0.95] holds 0.0 and 0.6: 1.0 already, nothing more fits
    assert not ledger.try_spend(0.95, 0.5)
    assert ledger.remaining(0.95) == 0.0
    assert ledger.try_spend(1.15, 0.5)  # [0.15, 1.15]: past every dropped spend, holds 0.6 only


def test_a_longer_window_spends_nothing_until_it_has_moved_past_what_was_dropped():
    ledger = Ledger(eps_window=1.0, window_s=1.0)
    for t in (0.0, 1.5, 3.0):
        assert ledger.try_spend(t, 0.1)  # each spend drops the one before it: 3.0 drops 1.5
    ledger.reconfigure(1.0, 10.0)
    # [1.5, 11.5] holds the dropped 1.5: in truth 0.2 is spent there, but a ledger that guessed what it no
    # longer holds could overspend, so it waits
    assert ledger.remaining(11.5) == 0.0 and not ledger.try_spend(11.5, 0.1)
    assert ledger.try_spend(11.6, 0.1)  # [1.6, 11.6]: every dropped spend lies before it; it holds 3.0
    assert ledger.spent(11.6) == pytest.approx(0.2) and ledger.remaining(11.6) == pytest.approx(0.8)


def test_the_window_is_exact_where_float_arithmetic_rounds():
    # in floats t - 0.1 == s, yet t - s is more than 0.1 s: s is outside the closed window [t - 0.1, t]
    s, t, window_s = 43.27670679050534, 43.37670679050534, 0.1
    assert t - window_s == s and Fraction(t) - Fraction(s) > Fraction(window_s)
    ledger = Ledger(eps_window=2.5, window_s=window_s)
    assert ledger.try_spend(s, 1.0)
    assert ledger.spent(t) == 0.0 and ledger.remaining(t) == 2.5
    assert ledger.try_spend(t, 2.5)
    assert ledger.spent(t) == 2.5


def test_the_store_keeps_the_latest_spend_the_ledger_dropped():
    ledger = Ledger(eps_window=1.0, window_s=1.0)
    assert ledger.try_spend(0.0, 1.0) and ledger.try_spend(1.5, 1.0)  # drops 0.0
    state = ledger.to_dict()
    assert state["latest_dropped"] == 0.0
    restored = Ledger.from_dict(state)
    restored.reconfigure(1.0, 5.0)  # a worker that takes the camera over with a longer window
    assert not restored.try_spend(5.0, 0.1)  # [0, 5] holds the dropped spend at 0.0
    assert restored.try_spend(6.6, 0.1)  # [1.6, 6.6]: nothing dropped, nothing held

    # a state stored before the field existed: its ledger had dropped what its window let go
    legacy = {k: v for k, v in state.items() if k != "latest_dropped"}
    old = Ledger.from_dict(legacy)
    assert old.try_spend(2.6, 1.0)  # same window: works as before
    old.reconfigure(1.0, 5.0)
    assert not old.try_spend(5.0, 0.1)


@pytest.mark.parametrize("dropped", [float("nan"), float("inf"), "x", 1.0])
def test_a_stored_drop_time_that_would_hide_spends_is_refused(dropped):
    state = {"eps_window": 1.0, "window_s": 10.0, "spends": [[0.5, "1/10"]], "latest_dropped": dropped}
    with pytest.raises(ConfigError, match="malformed"):
        Ledger.from_dict(state)  # not a finite time, or later than the oldest spend held (0.5)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("spend"), st.floats(0, 2, allow_nan=False), st.sampled_from([0.1, 0.25, 0.5, 1.0])),
        st.tuples(st.just("window"), st.sampled_from([0.25, 0.5, 1.0, 2.0, 5.0]), st.none()),
        st.tuples(st.just("budget"), st.sampled_from([0.5, 1.0, 2.0]), st.none()),
        st.tuples(st.just("store"), st.none(), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(steps=operations)
def test_no_spend_overspends_its_window_under_any_sequence_of_changes(steps):
    """Spends at times moving forward, windows shrunk and grown, budgets changed, the state stored and read
    back: every accepted spend fits the window ending at it, counting the whole history. And the ledger only
    refuses a spend that fits that history when its window holds a spend that a later spend's window had
    already let go of (one the ledger may have dropped)."""
    eps_window, window_s = 1.0, 1.0
    ledger = Ledger(eps_window, window_s)
    accepted: list[tuple[float, Fraction, float]] = []  # (time, cost, window in force)
    t = 0.0
    for op, a, b in steps:
        if op == "window":
            window_s = a
            ledger.reconfigure(eps_window, window_s)
        elif op == "budget":
            eps_window = a
            ledger.reconfigure(eps_window, window_s)
        elif op == "store":
            ledger = Ledger.from_dict(ledger.to_dict())
        else:
            t += a
            cost = exact_epsilon(b)
            held = sum((c for s, c, _ in accepted if within(t, s, window_s)), Fraction(0))
            fits = held + cost <= exact_epsilon(eps_window)
            if ledger.try_spend(t, b):
                assert fits, (t, b, window_s, eps_window, accepted)
                accepted.append((t, cost, window_s))
            else:
                let_go = [s for i, (s, _, _) in enumerate(accepted)
                          if any(not within(p, s, w) for p, _, w in accepted[i + 1:])]
                assert not fits or any(within(t, s, window_s) for s in let_go), (t, b, window_s, accepted)


def test_a_new_ledger_has_dropped_nothing():
    ledger = Ledger(eps_window=1.0, window_s=10.0)
    assert ledger.to_dict()["latest_dropped"] is None
    assert ledger.remaining(-math.pi) == 1.0 and ledger.try_spend(-1e9, 1.0)
    restored = Ledger.from_dict(ledger.to_dict())  # nothing dropped: a longer window spends at once
    restored.reconfigure(2.0, 1e10)
    assert restored.try_spend(0.0, 1.0) and restored.spent(0.0) == 2.0
