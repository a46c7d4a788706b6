"""Credential redaction for the service: the same functions streams/ applies at the ingest edge.

One implementation (streams.redact), so a URL is redacted the same way in a log line, a status, a
response and a metric label.
"""

from __future__ import annotations

from streams.redact import redact_text, redact_url, url_secrets

__all__ = ["redact_text", "redact_url", "url_secrets"]
