"""Redaction of credentials in camera URLs and in any text that may quote one.

Camera URLs often carry ``user:password@``; GStreamer error and debug strings sometimes quote the URL.
Every log line, error, health reason, status and metric label in ``streams/`` passes through these
functions at the edge.

>>> redact_url("rtsp://admin:hunter2@10.0.0.5:554/live?token=abc&x=1")
'rtsp://***@10.0.0.5:554/live?token=***&x=1'
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

# Query parameters that carry secrets in common camera/NVR URL schemes.
_SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "token",
        "access_token",
        "auth",
        "key",
        "secret",
        "signature",
        "sig",
    }
)

# scheme://userinfo@ : everything from the scheme to the last '@' before whitespace. A password typed with a raw
# '/', '?', '#' or '@' (instead of %2F, %3F, %23, %40) would end the userinfo early under RFC 3986 and survive
# a strict parse; masking up to the last '@' may hide part of a path that contains one, never a password.
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>\S*)@")
_QUERY_SECRET_RE = re.compile(
    r"(?P<key>(?:[?&;])(?:" + "|".join(sorted(_SECRET_QUERY_KEYS)) + r"))=(?P<value>[^&\s#;]*)",
    re.IGNORECASE,
)
REDACTED = "***"


def redact_url(url: str) -> str:
    """Return ``url`` with its userinfo and secret-looking query values replaced by ``***``.

    Everything between ``://`` and the last ``@`` counts as userinfo, even where a strict parse would end it
    sooner (a password typed with a raw ``/``, ``?`` or ``#``). Never raises: a string that does not parse as
    a URL is redacted textually instead.
    """
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        url = scheme + sep + REDACTED + "@" + rest.rsplit("@", 1)[1]
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in pairs):
            query = urlencode(
                [(k, REDACTED if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str, *secrets: str) -> str:
    """Redact every URL userinfo and secret query value inside free text, plus any literal ``secrets``.

    Pass the user name and password of the current camera as ``secrets`` so that messages which quote them
    outside a URL (some RTSP servers echo the user name) are covered too.
    """
    if not text:
        return text
    out = _USERINFO_RE.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    out = _QUERY_SECRET_RE.sub(lambda m: m.group("key") + "=" + REDACTED, out)
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, REDACTED)
    return out


def url_secrets(url: str) -> tuple[str, ...]:
    """The user name and password of ``url`` (percent-decoded and raw), for :func:`redact_text`."""
    _scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return ()
    userinfo = rest.rsplit("@", 1)[0]  # as redact_url reads it: up to the last '@'
    raw_user, _, raw_pw = userinfo.partition(":")
    found = [raw_user, raw_pw, unquote(raw_user), unquote(raw_pw)]
    return tuple(s for s in dict.fromkeys(found) if s)
