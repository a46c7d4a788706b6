"""Credential redaction for the service: the same functions streams/ applies at the ingest edge.

One implementation (streams.redact), so a URL is redacted the same way in a log line, a status, a
response and a metric label.
"""

from __future__ import annotations

import traceback

from pydantic import ValidationError

from streams.redact import REDACTED, carries_redaction_mask, redact_text, redact_url, url_secrets

__all__ = ["REDACTED", "carries_redaction_mask", "describe_validation_error", "redact_text", "redact_url",
           "redacted_error", "url_secrets"]


def describe_validation_error(err: ValidationError) -> str:
    """What pydantic refused, by field and message only: its own text quotes the values (a camera source
    with its password)."""
    text = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
    return f"{err.error_count()} invalid field(s): {text}"


def redacted_error(err: BaseException, *cameras, secrets: tuple[str, ...] = (), with_traceback: bool = False) -> str:
    """`err` as text for a log line or a status, with the credentials of `cameras` (`service.models.Camera`
    objects, or None), `secrets` and any URL's taken out. A config pydantic refuses is described by
    `describe_validation_error`."""
    found = [s for cam in cameras if cam is not None for s in url_secrets(cam.source)]
    if isinstance(err, ValidationError):
        text = describe_validation_error(err)
    elif with_traceback:
        text = "".join(traceback.format_exception(err)).rstrip()
    else:
        text = str(err) or type(err).__name__
    return redact_text(text, *found, *secrets)
