"""The audits' errors: one subclass of the project's error tree."""

from __future__ import annotations

from dp import DpstreamError


class AuditError(DpstreamError):
    """An audit could not run: missing face data, a model that does not load, or bad audit settings."""
