"""The worker's ledger: restored across takeovers, reconfigured in place, never overspending."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.camera_runner import CameraLedger
from service.models import Camera


def camera(**kw) -> Camera:
    return Camera(id="c", source="test:ball", **kw)


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=3.0), min_size=1, max_size=60),
    eps=st.sampled_from([0.1, 0.25, 0.5, 1.0]),
    eps_window=st.sampled_from([1.0, 2.5, 4.0]),
    window_s=st.sampled_from([1.0, 5.0, 10.0]),
    split=st.integers(min_value=0, max_value=60),
)
def test_restored_ledger_never_overspends_any_window(gaps, eps, eps_window, window_s, split) -> None:
    cam = camera(eps_window=eps_window, window_s=window_s, eps_pix=min(eps, eps_window))
    ledger = CameraLedger.for_camera(cam, None)
    spends, t = [], 1_000.0
    for n, gap in enumerate(gaps):
        if n == split:  # a takeover: the next worker starts from the stored state
            ledger = CameraLedger.for_camera(cam, ledger.to_dict())
        t += gap
        if ledger.try_spend(t, eps):
            spends.append(t)
    for start in spends:
        in_window = [s for s in spends if start <= s <= start + window_s]
        assert len(in_window) * eps <= eps_window + 1e-9


def test_reconfigure_keeps_spends_and_applies_the_new_limit() -> None:
    ledger = CameraLedger.for_camera(camera(eps_window=4.0, window_s=10.0), None)
    assert ledger.try_spend(100.0, 1.0) and ledger.try_spend(101.0, 1.0)
    ledger.reconfigure(eps_window=2.0, window_s=10.0)
    assert ledger.spent(101.0) == 2.0
    assert not ledger.try_spend(102.0, 1.0)  # the new, lower limit is already spent
    ledger.reconfigure(eps_window=3.0, window_s=10.0)
    assert ledger.try_spend(102.0, 1.0)


def test_spend_stamped_before_the_last_one_is_charged_at_the_later_time() -> None:
    ledger = CameraLedger.for_camera(camera(eps_window=4.0, window_s=10.0), None)
    assert ledger.try_spend(100.0, 1.0)
    taken_over = CameraLedger.for_camera(camera(eps_window=4.0, window_s=10.0), ledger.to_dict())
    assert taken_over.try_spend(99.5, 1.0)  # another machine's clock, half a second behind
    assert taken_over.spent(100.0) == 2.0


def test_the_reported_budget_follows_a_changed_window_before_the_next_release() -> None:
    from service.budget import budget_of

    old = camera(eps_window=5.0, window_s=10.0)
    ledger = CameraLedger.for_camera(old, None)
    for t in (100.0, 101.0, 102.0, 103.0, 104.0):
        assert ledger.try_spend(t, 1.0)
    state = ledger.to_dict()  # what the store holds: the last release's ledger
    assert budget_of(old, state, 105.0).eps_remaining == 0.0
    wider = old.model_copy(update={"eps_window": 100.0})
    budget = budget_of(wider, state, 105.0)
    assert (budget.eps_spent, budget.eps_remaining, budget.guarantee.eps_window) == (5.0, 95.0, 100.0)
    shorter = old.model_copy(update={"window_s": 2.0})  # only the spends at 103 and 104 are in its window
    assert budget_of(shorter, state, 105.0).eps_spent == 2.0
