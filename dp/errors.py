"""The one exception tree of dpstream. Every package raises these, never a dependency's classes."""

from __future__ import annotations


class DpstreamError(Exception):
    """Base class of every error dpstream raises on purpose."""


class ConfigError(DpstreamError, ValueError):
    """A setting or an input is invalid; the message names it, the bad value and what to do."""


class FrameError(ConfigError):
    """A frame handed to the pixelizer has the wrong dtype, shape, channel count or size."""


class ReleaseFormatError(DpstreamError, ValueError):
    """A byte string is not a dpstream release: truncated, corrupted, foreign or from a newer format."""


class BudgetExhausted(DpstreamError):
    """A release would overspend the camera's privacy budget in the current window.

    dpstream itself never raises it: `Ledger.try_spend` answers False and the worker repeats the last
    release. It is for callers that would rather stop than repeat."""


class IngestError(DpstreamError):
    """A camera or file could not be opened, decoded or kept streaming."""


class StoreUnavailable(DpstreamError):
    """The Redis/Valkey store cannot be reached or answered with an error."""


class BackendUnavailable(ConfigError):
    """The requested compute backend (for example CUDA) is not available on this machine."""
