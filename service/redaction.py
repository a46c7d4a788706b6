"""Strip credentials out of URLs and messages before they reach a log line, a response or Redis status."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# scheme://user:password@host or scheme://user@host: keep the scheme and host, drop the userinfo
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@")
_SECRET_QUERY = re.compile(r"(?i)((?:password|passwd|pwd|token|key|secret|auth)=)[^&\s]*")


def redact_url(url: str) -> str:
    """`rtsp://user:pw@cam/live?token=x` -> `rtsp://***@cam/live?token=***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = _SECRET_QUERY.sub(r"\1***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Redact every URL userinfo and secret-looking query value inside free text (error messages)."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    return _SECRET_QUERY.sub(r"\1***", text)
