"""A camera's privacy budget as the API reports it, from the ledger state the worker keeps in Redis."""

from __future__ import annotations

from typing import Any

from service.models import Budget, Camera, Guarantee


def budget_of(camera: Camera, ledger_state: dict[str, Any] | None, now_s: float) -> Budget:
    """Spent and remaining epsilon of the window ending at `now_s`, and the stated guarantee.

    With no ledger yet (nothing released) the whole window is left. The guarantee is the triple
    (eps_window, m_pixels, window_s) of privacy.md section 1.
    """
    from dp import Ledger

    if ledger_state is not None:
        ledger = Ledger.from_dict(ledger_state)
        # the stored state carries the window of its last spend; the camera may have been changed since (and a
        # worker applies a change to its ledger at once, while the store sees it only with the next release)
        ledger.reconfigure(camera.eps_window, camera.window_s)
        spent, remaining = float(ledger.spent(now_s)), float(ledger.remaining(now_s))
    else:
        spent, remaining = 0.0, float(camera.eps_window)
    return Budget(
        camera_id=camera.id, eps_spent=spent, eps_remaining=remaining,
        eps_frame=camera.eps_pix + camera.eps_layout,
        guarantee=Guarantee(eps_window=camera.eps_window, m_pixels=camera.m_pixels, window_s=camera.window_s),
        as_of_s=now_s,
    )
