"""Per-camera health: the state names every dashboard and API shows, and a thread-safe holder."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


class HealthState(enum.StrEnum):
    """Camera states. ``str`` values are the lower-case names used in APIs and metric labels."""

    STARTING = "starting"  # pipeline built, waiting for the first frame
    STREAMING = "streaming"  # frames arriving
    STALLED = "stalled"  # connected, but no frame for stall_timeout_s
    RECONNECTING = "reconnecting"  # lost the source; retrying with backoff
    FAILED = "failed"  # a problem retrying will not fix soon: bad URL, refused credentials, unsupported codec
    DISABLED = "disabled"  # stopped on purpose


@dataclass(frozen=True)
class CameraHealth:
    """A snapshot: ``state``, a redacted human-readable ``reason`` and when the state was entered."""

    state: HealthState
    reason: str = ""
    since_s: float = 0.0  # Unix time of the transition

    def to_dict(self) -> dict:
        return {"state": self.state.value, "reason": self.reason, "since_s": self.since_s}


class HealthTracker:
    """Holds the current :class:`CameraHealth`; calls ``on_change(old, new)`` when the state or reason changes.

    Reasons must already be redacted. ``on_change`` runs on the caller's thread, outside the lock; it must
    not block for long and its exceptions are the caller's to handle.
    """

    def __init__(self, on_change: Callable[[CameraHealth, CameraHealth], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._health = CameraHealth(HealthState.STARTING, "not started", time.time())
        self._on_change = on_change

    @property
    def current(self) -> CameraHealth:
        with self._lock:
            return self._health

    def set(self, state: HealthState, reason: str = "") -> bool:
        """Move to ``state``; return True if anything changed (and the callback ran)."""
        with self._lock:
            old = self._health
            if old.state == state and old.reason == reason:
                return False
            new = CameraHealth(state, reason, time.time() if old.state != state else old.since_s)
            self._health = new
        if self._on_change is not None:
            self._on_change(old, new)
        return True
