"""Empirical differential-privacy audit of the real `dp.Pixelizer`.

Neighbouring frames, chosen adversarially: a cell's worth of `m_pixels` positions that are black (0) in X
and white (255) in X', on mid-grey surroundings (so clipping at 0 and 255 does not hide the shift). That
moves the cell's C sums by the most one neighbour can: 255 * m_pixels each.

The distinguisher looks at the released means of the cell that holds the changed pixels and estimates
    eps_lower_bound = ln( P[O in S | X'] / P[O in S | X] )
for a rejection set S (threshold events on the released means, both directions), with Clopper-Pearson
bounds: P[O in S | X'] is replaced by its lower bound and P[O in S | X] by its upper bound, each at
confidence 1 - alpha/2, so the bound holds with confidence 1 - alpha. S is chosen on one batch of releases
and the bound computed on a fresh batch, so choosing the best of many events does not inflate it.

Sampling: the frame is a grid of identical cells, every one holding the same pattern, so one release
gives one sample per cell. A cell's released mean depends on its own pixels and its own noise draw only
(privacy.md §2), so each cell's output has exactly the distribution of the target cell of the
single-cell pair (X, X'). A mechanism is flagged when the lower bound exceeds the claimed eps_pix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from attacks.errors import AuditError
from attacks.stats import clopper_pearson
from dp import ConfigError, Pixelizer, PixelizeSpec


@dataclass(frozen=True)
class MechanismAuditConfig:
    eps_pix: float
    m_pixels: int
    cell_size: int = 16
    channels: int = 3
    n_select: int = 20_000  # samples per frame used to choose the rejection set
    n_eval: int = 200_000  # fresh samples per frame used for the bound
    confidence: float = 0.99
    frame_cells: int = 16  # the sampling frame is frame_cells x frame_cells cells

    def __post_init__(self) -> None:
        if self.m_pixels > self.cell_size * self.cell_size:
            raise AuditError(
                f"m_pixels={self.m_pixels} does not fit in one {self.cell_size}px cell "
                f"({self.cell_size**2} pixels); audit with a larger --cell-size"
            )
        if not 0.5 < self.confidence < 1.0:
            raise AuditError(f"confidence={self.confidence} must be between 0.5 and 1")
        for name in ("n_select", "n_eval"):
            if getattr(self, name) < 100:
                raise AuditError(f"{name}={getattr(self, name)}: the audit needs at least 100 releases per frame "
                                 f"(the default is {getattr(MechanismAuditConfig, name):,})")
        # the largest bound n_eval samples can ever show (every X' sample in S, no X sample in S): a claim at or
        # above it passes whatever the mechanism does, so the audit would say nothing
        top = max_detectable_eps(self.n_eval, 1.0 - self.confidence)
        if self.eps_pix >= top:
            raise AuditError(
                f"eps_pix={self.eps_pix:g} cannot be audited with n_eval={self.n_eval:,} at confidence "
                f"{self.confidence:g}: no outcome can show a lower bound above {top:.2f}, so the audit could not fail; "
                f"raise --n-eval (each factor e buys about 1 more) or audit a smaller eps"
            )


@dataclass
class EventEstimate:
    """A rejection set and what the released means did on it."""

    event: str
    hits_x_prime: int
    hits_x: int
    n: int
    eps_lower_bound: float


@dataclass
class MechanismAudit:
    eps_claimed: float
    eps_true_noise: float  # the eps_pix the noise was actually calibrated to (differs for the control)
    eps_lower_bound: float
    confidence: float
    passed: bool
    m_pixels: int
    cell_size: int
    channels: int
    event: str  # the rejection set S, chosen on the selection batch
    p_numerator: float  # P[O in S] under the frame S favours, on the evaluation batch
    p_denominator: float  # P[O in S] under the other frame
    n_select: int
    n_eval: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def neighbouring_cells(cell_size: int, m_pixels: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """One cell of X and of X': mid-grey, with m_pixels positions black in X and white in X'."""
    x = np.full((cell_size, cell_size, channels), 128, dtype=np.uint8)
    rows, cols = np.divmod(np.arange(m_pixels), cell_size)
    x_prime = x.copy()
    x[rows, cols, :] = 0
    x_prime[rows, cols, :] = 255
    return x, x_prime


def sample_cell_means(
    px: Pixelizer, cell: np.ndarray, n_samples: int, frame_cells: int, progress: Callable[[int], None] | None
) -> np.ndarray:
    """n_samples x C released means of `cell`, from releases of a frame tiled with copies of it."""
    frame = np.tile(cell, (frame_cells, frame_cells, 1))
    c = cell.shape[2]
    per_release = frame_cells * frame_cells
    chunks = []
    got = 0
    while got < n_samples:
        rel = px.release(frame)  # no key: real randomness, as in production
        # fixed layout: one cell per macro-block, means in raster order, C per cell
        chunks.append(np.asarray(rel.means, dtype=np.int64).reshape(per_release, c))
        # the last release gives more cells than are still needed: count only those kept
        kept = min(per_release, n_samples - got)
        got += kept
        if progress:
            progress(kept)
    return np.concatenate(chunks)[:n_samples]


def _events(samples_xp: np.ndarray, samples_x: np.ndarray):
    """Threshold events on the released means: every channel at or above t (X' is brighter), every channel
    at or below t (X is darker), and the same on the channel sum. Yields (name, hits in X', hits in X),
    oriented so that the first count is the one expected to be larger."""
    mins_xp, mins_x = samples_xp.min(axis=1), samples_x.min(axis=1)
    maxs_xp, maxs_x = samples_xp.max(axis=1), samples_x.max(axis=1)
    sums_xp, sums_x = samples_xp.sum(axis=1), samples_x.sum(axis=1)
    c = samples_xp.shape[1]
    for t in range(0, 256):
        yield f"min over channels >= {t}", int((mins_xp >= t).sum()), int((mins_x >= t).sum())
        yield f"max over channels <= {t}", int((maxs_x <= t).sum()), int((maxs_xp <= t).sum())
    for t in range(0, 255 * c + 1, max(1, c)):
        yield f"channel sum >= {t}", int((sums_xp >= t).sum()), int((sums_x >= t).sum())
        yield f"channel sum <= {t}", int((sums_x <= t).sum()), int((sums_xp <= t).sum())


def max_detectable_eps(n: int, alpha: float) -> float:
    """The largest eps_lower_bound n samples per frame can give at confidence 1 - alpha."""
    return _lower_bound(n, 0, n, alpha)


def _lower_bound(hits_num: int, hits_den: int, n: int, alpha: float) -> float:
    if hits_num == 0:
        return -math.inf
    p_num_lo, _ = clopper_pearson(hits_num, n, alpha / 2)
    _, p_den_hi = clopper_pearson(hits_den, n, alpha / 2)
    return math.log(p_num_lo / p_den_hi)


def _count(samples_num: np.ndarray, samples_den: np.ndarray, event: str) -> tuple[int, int]:
    for name, a, b in _events(samples_num, samples_den):
        if name == event:
            return a, b
    raise AuditError(f"unknown event {event!r}")  # pragma: no cover


def audit_mechanism(
    cfg: MechanismAuditConfig,
    *,
    noise_eps_pix: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> MechanismAudit:
    """Audit the Pixelizer at cfg's settings. `noise_eps_pix` calibrates the noise to another epsilon while
    the claim stays cfg.eps_pix: the deliberately broken control (2x eps_pix is half the noise)."""
    t0 = time.monotonic()
    eps_noise = cfg.eps_pix if noise_eps_pix is None else noise_eps_pix
    try:
        spec = PixelizeSpec(eps_pix=eps_noise, m_pixels=cfg.m_pixels, channels=cfg.channels, layout="fixed",
                            cell_size=cfg.cell_size)
    except ConfigError as exc:
        raise AuditError(f"mechanism audit settings: {exc}") from exc
    px = Pixelizer(spec, backend="cpu")
    x, x_prime = neighbouring_cells(cfg.cell_size, cfg.m_pixels, cfg.channels)
    alpha = 1.0 - cfg.confidence

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        return (
            sample_cell_means(px, x_prime, n, cfg.frame_cells, progress),
            sample_cell_means(px, x, n, cfg.frame_cells, progress),
        )

    # choose the rejection set on one batch ...
    sel_xp, sel_x = draw(cfg.n_select)
    best = max(
        (EventEstimate(name, a, b, cfg.n_select, _lower_bound(a, b, cfg.n_select, alpha))
         for name, a, b in _events(sel_xp, sel_x)),
        key=lambda e: e.eps_lower_bound,
    )
    # ... and bound its privacy loss on a fresh one
    ev_xp, ev_x = draw(cfg.n_eval)
    hits_num, hits_den = _count(ev_xp, ev_x, best.event)
    lb = _lower_bound(hits_num, hits_den, cfg.n_eval, alpha)
    return MechanismAudit(
        eps_claimed=cfg.eps_pix,
        eps_true_noise=eps_noise,
        eps_lower_bound=lb,
        confidence=cfg.confidence,
        passed=lb <= cfg.eps_pix,
        m_pixels=cfg.m_pixels,
        cell_size=cfg.cell_size,
        channels=cfg.channels,
        event=best.event,
        p_numerator=hits_num / cfg.n_eval,
        p_denominator=hits_den / cfg.n_eval,
        n_select=cfg.n_select,
        n_eval=cfg.n_eval,
        seconds=time.monotonic() - t0,
    )
