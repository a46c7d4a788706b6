"""Redaction of credentials in camera URLs and in any text that may quote one.

Camera URLs often carry ``user:password@``; GStreamer error and debug strings sometimes quote the URL.
Every log line, error, health reason, status and metric label in ``streams/`` passes through these
functions at the edge.

>>> redact_url("rtsp://admin:hunter2@10.0.0.5:554/live?token=abc&x=1")
'rtsp://***@10.0.0.5:554/live?token=***&x=1'

Some cameras take their credentials in the path instead (XMeye/Sofia DVRs, some NVRs):

>>> redact_url("rtsp://10.0.0.5:554/user=admin&password=hunter2&channel=1&stream=0.sdp")
'rtsp://10.0.0.5:554/user=***&password=***&channel=1&stream=0.sdp'
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
        "pw",
        "apikey",
        "api_key",
        "auth_token",
        "access_key",
        "user",
        "username",
        "usr",
        "login",
    }
)

# scheme://userinfo@ : everything from the scheme to the last '@' before whitespace. A password typed with a raw
# '/', '?', '#' or '@' (instead of %2F, %3F, %23, %40) would end the userinfo early under RFC 3986 and survive
# a strict parse; masking up to the last '@' may hide part of a path that contains one, never a password.
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>\S*)@")
# key=value with a secret key, after any separator a camera URL uses: the query's '?' and '&', ';' params, and
# the '/' and '_' of credentials in the path ('/user=admin_password=x_channel=1'). A value runs to the next
# '&', ';', '#' or whitespace: in the '_' form that hides the rest of the path too, never less than the secret.
_SECRET_KEY = r"(?:[?&;/_])(?:" + "|".join(sorted(_SECRET_QUERY_KEYS, key=len, reverse=True)) + r")"
_QUERY_SECRET_RE = re.compile(r"(?P<key>" + _SECRET_KEY + r")=(?P<value>[^&\s#;]*)", re.IGNORECASE)
# The same, for url_secrets: each secret value alone ('_' form: up to the next '_key='), to find it quoted
# outside the URL.
_SECRET_VALUE_RE = re.compile(_SECRET_KEY + r"=(?P<value>.*?)(?=_[A-Za-z][A-Za-z0-9]*=|[&\s#;?]|$)",
                              re.IGNORECASE)
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
    path = _QUERY_SECRET_RE.sub(lambda m: m.group("key") + "=" + REDACTED, parts.path)
    return urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


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
    """The user name and password of ``url`` (percent-decoded and raw), and the values of its secret-looking
    parameters (query or path), for :func:`redact_text`."""
    _scheme, sep, rest = url.partition("://")
    if not sep:
        return ()
    found: list[str] = []
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)  # as redact_url reads it: up to the last '@'
        raw_user, _, raw_pw = userinfo.partition(":")
        found += [raw_user, raw_pw]
    found += [m.group("value") for m in _QUERY_SECRET_RE.finditer(rest)]
    found += [m.group("value") for m in _SECRET_VALUE_RE.finditer(rest)]
    found += [unquote(s) for s in found]
    # longest first: redact_text replaces in this order, and a shorter one may be part of a longer one
    return tuple(sorted((s for s in dict.fromkeys(found) if s), key=len, reverse=True))
