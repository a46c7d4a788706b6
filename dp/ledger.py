"""`Ledger`: w-event privacy budget of one camera (privacy.md §1).

The sum of eps over the releases in any window of `window_s` seconds stays at or under `eps_window`. Sums
are exact (epsilons are the decimals the operator wrote, see dp.spec.exact_epsilon), so 0.3 holds three
releases of 0.1 and no rounding can ever let a window overspend. Windows are closed intervals: spends at
exactly `t` and `t - window_s` count together, the conservative reading, and exactly: a spend at `s` is in
the window ending at `t` when `t - s <= window_s` as real numbers, not as rounded floats.

The ledger drops a spend once it has left the window, and keeps the time of the latest spend it dropped. A
window that `reconfigure` makes longer may reach back to that time: the spends there are no longer counted,
so nothing is spent until the window has moved past it (at most the difference of the two windows).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from fractions import Fraction

from dp.errors import ConfigError
from dp.spec import _check_eps, _check_number, exact_epsilon


class Ledger:
    """Per-camera budget over a sliding window.

    Usage::

        ledger = Ledger(eps_window=4.0, window_s=10.0)
        if ledger.try_spend(t_s, spec.eps_frame_exact):
            ...release the frame...
        else:
            ...repeat the last release (free post-processing)...
    """

    def __init__(self, eps_window: float, window_s: float) -> None:
        self.eps_window = _check_eps("eps_window", eps_window)
        window = _check_number("window_s", window_s, "give the window in seconds, such as 10.0")
        if not (window > 0 and window < float("inf")):
            raise ConfigError(f"window_s={window_s!r} must be a positive number of seconds")
        self.window_s = window
        self._limit = exact_epsilon(self.eps_window)
        self._spends: deque[tuple[float, Fraction]] = deque()
        self._total = Fraction(0)
        self._last_t: float | None = None
        self._refundable: tuple[float, Fraction] | None = None  # the latest spend, until refunded
        self._latest_dropped: float | None = None  # time of the latest spend dropped from _spends
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger(eps_window={self.eps_window!r}, window_s={self.window_s!r})"

    @staticmethod
    def _in_window(t: float, s: float, window_s: float) -> bool:
        """Whether a spend at `s` lies in the closed window of `window_s` ending at `t`, exactly: `t - s`
        rounded decides unless it rounds to `window_s` itself (rounding is monotone), and then the rounding
        error, which Knuth's TwoSum gives exactly (`t - s == d + err` as real numbers)."""
        d = t - s
        if d != window_s:
            return d < window_s
        back = d - t
        err = (t - (d - back)) + (-s - back)
        return err <= 0

    def _reaches_dropped(self, t: float) -> bool:
        """Whether the window ending at `t` may hold spends the ledger has dropped (see the module doc)."""
        return self._latest_dropped is not None and self._in_window(t, self._latest_dropped, self.window_s)

    def _expired(self, t_s: float) -> tuple[int, Fraction | int]:
        """How many of the oldest spends fall before the window ending at `t_s`, and their total."""
        n, total = 0, 0
        for s, c in self._spends:  # oldest first
            if self._in_window(t_s, s, self.window_s):  # spends come no later than t_s (_check_time)
                break
            n, total = n + 1, total + c
        return n, total

    @staticmethod
    def _cost(eps) -> Fraction:
        """The exact cost of a spend: a Fraction as it is (PixelizeSpec.eps_frame_exact: eps_pix + eps_layout
        summed exactly; their float sum may round below it), else the decimal the operator wrote."""
        if isinstance(eps, Fraction):
            if not eps > 0:
                raise ConfigError(f"eps={eps} must be > 0")
            return eps
        return exact_epsilon(_check_eps("eps", eps))

    @staticmethod
    def _finite_time(t_s: float) -> float:
        t = _check_number("t_s", t_s, "give a time in seconds")
        if not math.isfinite(t):  # a NaN would match no spend: the whole budget would look unspent
            raise ConfigError(f"t_s={t_s!r} must be a finite time in seconds")
        return t

    def _check_time(self, t_s: float) -> float:
        t = self._finite_time(t_s)
        if self._last_t is not None and t < self._last_t:
            raise ConfigError(f"t_s={t} is earlier than the last spend at {self._last_t}; use a monotonic clock")
        return t

    def try_spend(self, t_s: float, eps: float) -> bool:
        """Spend `eps` at time `t_s` if the window allows it; False (and nothing spent) otherwise. Pass the
        spec's `eps_frame_exact` where there is one: exact to the last digit."""
        cost = self._cost(eps)
        with self._lock:
            t = self._check_time(t_s)
            if self._reaches_dropped(t):
                return False
            # a refused spend forgets nothing: a later call may still come at an earlier time than this one
            # (time only has to pass the last *spend*), and the spends this one would expire count there
            n_old, old = self._expired(t)
            total = (self._total - old if n_old else self._total) + cost
            if total > self._limit:
                return False
            for _ in range(n_old):
                self._latest_dropped = self._spends.popleft()[0]
            self._spends.append((t, cost))
            self._total = total
            self._last_t = t
            self._refundable = (t, cost)
            return True

    def refund(self, t_s: float, eps: float) -> bool:
        """Take back the latest spend if it is `eps` at `t_s`: for a release that failed before any output
        existed (a refused frame), whose budget was never used. True when it was taken back.

        Only the caller that made the spend may refund it, and only while nothing of that release exists:
        a refund after an output left would break the guarantee. So only the latest spend can come back,
        once: after a refund the spend before it stays spent (its release may have left).
        """
        cost = self._cost(eps)
        t = _check_number("t_s", t_s, "give the time of the spend")
        with self._lock:
            if self._refundable != (t, cost):  # set by the last accepted spend, the last in _spends
                return False
            self._refundable = None
            self._spends.pop()
            self._total -= cost
            return True  # _last_t stays: later spends still may not come earlier than this one

    def reconfigure(self, eps_window: float, window_s: float) -> None:
        """Change the budget and window in place (live configuration); spends already made stay counted.

        Replacing the ledger instead could lose a spend made concurrently on the old one. A longer window
        spends nothing while it still reaches back to spends the shorter one had dropped (at most the
        difference of the two windows): the ledger cannot count what it no longer holds.
        """
        probe = Ledger(eps_window, window_s)  # validates both values
        with self._lock:
            self.eps_window, self.window_s, self._limit = probe.eps_window, probe.window_s, probe._limit

    @property
    def last_spend_s(self) -> float | None:
        """Time of the latest spend (spends must come at this time or later), None before the first."""
        return self._last_t

    def spent(self, t_s: float) -> float:
        """Epsilon spent in the window ending at `t_s`, of the spends the ledger holds (see `remaining`)."""
        t = self._finite_time(t_s)
        with self._lock:
            return float(self._spent(t))

    def _spent(self, t: float) -> Fraction:
        return sum((c for s, c in self._spends if s <= t and self._in_window(t, s, self.window_s)), Fraction(0))

    def remaining(self, t_s: float) -> float:
        """Epsilon that a release at `t_s` could still spend: none while the window reaches back to spends
        the ledger has dropped (after `reconfigure` made it longer)."""
        t = self._finite_time(t_s)
        with self._lock:
            if self._reaches_dropped(t):
                return 0.0
            return max(float(self._limit - self._spent(t)), 0.0)

    def to_dict(self) -> dict:
        """JSON-safe state (for the store); epsilons as exact decimal strings."""
        with self._lock:
            return {
                "eps_window": self.eps_window,
                "window_s": self.window_s,
                "spends": [[t, f"{c.numerator}/{c.denominator}"] for t, c in self._spends],
                "latest_dropped": self._latest_dropped,  # None: nothing dropped yet
            }

    @classmethod
    def from_dict(cls, state: dict) -> Ledger:
        try:
            ledger = cls(state["eps_window"], state["window_s"])
            for t, c in state.get("spends", []):
                cost, when = Fraction(c), float(t)
                # a cost <= 0 would give budget back, a NaN time would switch the clock check off
                if not cost > 0 or not math.isfinite(when) or (ledger._last_t is not None and when < ledger._last_t):
                    raise ValueError(f"spend {c!r} at {t!r} is not a positive cost at a finite time, in order")
                ledger._spends.append((when, cost))
                ledger._total += cost
                ledger._last_t = when
            if state.get("latest_dropped") is not None:
                dropped = float(state["latest_dropped"])
                # spends are dropped oldest first; a later time, or none, would hide spends still counted
                if not math.isfinite(dropped) or (ledger._spends and dropped > ledger._spends[0][0]):
                    raise ValueError(f"latest_dropped={dropped!r} is not a finite time before the spends held")
                ledger._latest_dropped = dropped
            elif "latest_dropped" not in state and ledger._last_t is not None:
                # stored before the field existed: that ledger had dropped what its window let go at its last
                # spend, so at worst a spend just outside the window ending there
                ledger._latest_dropped = ledger._last_t - ledger.window_s
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            raise ConfigError(f"ledger state is malformed: {exc}") from None
        return ledger
