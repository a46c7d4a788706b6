"""Credential redaction for the service: the same functions streams/ applies at the ingest edge.

One implementation (streams.redact), so a URL is redacted the same way in a log line, a status, a
response and a metric label.
"""

from __future__ import annotations

from pydantic import ValidationError

from streams.redact import redact_text, redact_url, url_secrets

__all__ = ["describe_validation_error", "redact_text", "redact_url", "url_secrets"]


def describe_validation_error(err: ValidationError) -> str:
    """What pydantic refused, by field and message only: its own text quotes the values (a camera source
    with its password)."""
    text = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
    return f"{err.error_count()} invalid field(s): {text}"
