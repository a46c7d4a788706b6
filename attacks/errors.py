"""The audits' errors, in the project's error tree."""

from __future__ import annotations

from dp import DpstreamError


class AuditError(DpstreamError):
    """An audit could not run: missing face data, a model that does not load, or bad audit settings."""


class AuditInterrupted(DpstreamError):
    """An audit was stopped by SIGTERM or SIGINT; `partial` holds what it had finished (or None)."""

    def __init__(self, signum: int, partial: object | None = None) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.partial = partial
