"""Redaction of credentials in camera URLs and in any text that may quote one.

Camera URLs often carry ``user:password@``; GStreamer error and debug strings sometimes quote the URL.
Every log line, error, health reason, status and metric label in ``streams/`` passes through these
functions at the edge.

Camera URLs (``rtsp``, ``rtsps``, ``rtspt``, ``rtspu``, ``http(s)``, ``rtmp(s)``, ``srt``) are redacted
fail-closed: the userinfo, and the value of every query, fragment and path parameter (``?k=v``, ``;k=v``,
``/k=v``, ``&k=v``) are masked, except for the parameters named in :data:`PUBLIC_PARAMS` (which stream of
which channel, transport, codec, size) when their value looks like one. No list of secret names can know
every camera's (``authtoken``, ``jwt``, ``authbasic``...), so this one lists what may be shown instead:

>>> redact_url("rtsp://admin:hunter2@10.0.0.5:554/live?token=abc&x=1&channel=2")
'rtsp://***@10.0.0.5:554/live?token=***&x=***&channel=2'

Some cameras take their credentials in the path instead (XMeye/Sofia DVRs, some NVRs):

>>> redact_url("rtsp://10.0.0.5:554/user=admin&password=hunter2&channel=1&stream=0.sdp")
'rtsp://10.0.0.5:554/user=***&password=***&channel=1&stream=0.sdp'

Not recognised, and so shown as written: a secret that is a whole path segment, with no ``name=`` before it
(UniFi Protect's ``rtsps://host:7441/TOKEN?enableSrtp``, RTMP stream keys ``rtmp://host/app/KEY``), and a
bare query word without ``=`` (``?SECRET``). Keep such a camera's URL out of anything shared.

Other URLs (``redis://``, ``file://``) and free text mask only values whose name says secret
(``password=``, ``client_secret=``, ``token=``...): a GStreamer message is full of harmless ``width=320``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

# Parameter names that carry secrets in common camera/NVR/SRT URL schemes and GStreamer properties. A name
# counts also as the last word of a longer one: 'client_secret', 'x-auth-token', 'stream-key', 'user-pw'.
_SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
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
        "user-id",
        "proxy-id",
    }
)

# The start of a URL: any 'scheme://', or a camera or service scheme whose '//' is missing or short
# ('rtsp:user:pw@host'). Not every 'word:' (that would read 'Error:' as a scheme, and 'uri:rtsp://u:pw@h'
# would lose its 'rtsp://').
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://|\b(?i:rtsp[stu]?|rtmps?|srt|https?|rediss?):/{0,2}"
_SCHEME_RE = re.compile(_SCHEME)
# A quote followed by the end of a word closes a quoted URL or value: 'location="rtsp://u:pw@h/x" latency=0'.
# A quote inside a password ('pa"ss') is followed by more of it and does not.
_CLOSING_QUOTE = r"""["'](?=[\s,;:.)\]}>]|$)"""
# scheme://userinfo@ : everything from the scheme to the last '@' before a closing quote, else to the last
# '@' before whitespace. A password typed with a raw '/', '?', '#' or '@' (instead of %2F, %3F, %23, %40)
# would end the userinfo early under RFC 3986 and survive a strict parse; masking up to the last '@' may hide
# part of a path that contains one, never a password (unless it holds an '@' and then a closing quote).
_USERINFO_RE = re.compile(rf"(?P<scheme>{_SCHEME})(?P<userinfo>(?:(?!{_CLOSING_QUOTE})\S)*@|\S*@)")
# key=value with a secret key that is not the tail of a longer word: after the query's '?' and '&', ';'
# params, the '/' and '_' of credentials in the path ('/user=admin_password=x_channel=1'), a '-' ('user-pw'),
# a space or the start of a bare query string. A value runs to the next '&', ';', '#', whitespace or closing
# quote: in the '_' form that hides the rest of the path too, never less than the secret.
_SECRET_KEY = (r"(?<![A-Za-z0-9])(?:"
               + "|".join(re.escape(k) for k in sorted(_SECRET_QUERY_KEYS, key=len, reverse=True)) + ")")
_QUERY_SECRET_RE = re.compile(
    rf"(?P<key>{_SECRET_KEY})=(?P<value>(?:(?!{_CLOSING_QUOTE})[^&\s#;])*)", re.IGNORECASE
)
# The same, for url_secrets: each secret value alone ('_' form: up to the next '_key='), to find it quoted
# outside the URL.
_SECRET_VALUE_RE = re.compile(_SECRET_KEY + r"=(?P<value>.*?)(?=_[A-Za-z][A-Za-z0-9]*=|[&\s#;?]|$)",
                              re.IGNORECASE)
# A query parameter whose name is percent-encoded ('?pass%77ord=x'): the server decodes it to a secret name.
_ENCODED_KEY_RE = re.compile(r"(?<=[?&;#])(?P<key>[^&;=#]*%[^&;=#]*)=(?P<value>[^&;#]*)")
# A secret in a quoted mapping (a JSON object, a Python dict's repr, YAML flow style) that quotes a config:
# '"password": "x"', "'client_secret': 'x'", '"pwd": 1234'. The key is a secret name, or ends in one after a
# '-', '_' or '.' ('rtsp_password', 'x-auth-token'); the value is a quoted string (to its unescaped closing
# quote) or a bare token (to the next ',', '}', ']' or whitespace).
_QUOTED_KEY = (r"(?:[A-Za-z0-9]+[-_.])*(?:authorization|"
               + "|".join(re.escape(k) for k in sorted(_SECRET_QUERY_KEYS, key=len, reverse=True)) + ")")
_MAPPING_SECRET_RE = re.compile(
    rf"""(?P<key>(?P<kq>["']){_QUOTED_KEY}(?P=kq)\s*:\s*)"""
    r"""(?:(?P<vq>["'])(?:\\.|(?!(?P=vq)).)*(?P=vq)|[^\s,}\]]+)""",
    re.IGNORECASE | re.DOTALL,
)
# An HTTP/RTSP credentials header quoted in a message ('Authorization: Basic dXNlcjpwdw==', a Digest
# response, 'Proxy-Authorization: Bearer ...'): everything after the header name, to the end of its line.
_AUTH_HEADER_RE = re.compile(r"(?P<key>\b(?:proxy-)?authorization\s*:[ \t]*)(?![\s\"'])[^\r\n]*", re.IGNORECASE)
REDACTED = "***"

# Query and path parameters of a camera URL whose values are shown as written: which stream of which channel
# (Dahua/Amcrest, Hikvision, Uniview, Axis, Bosch, ONVIF profiles), how it is carried (UniFi's enableSrtp, SRT's
# latency and mode), what it looks like. Names compare case-insensitively and percent-decoded. Every other
# parameter's value is masked: a new name costs a '***' in a display, a missed secret would leak it.
PUBLIC_PARAMS = frozenset(
    {
        "channel", "ch", "chn", "subtype", "stream", "streamtype", "streamprofile", "profile", "camera", "cam",
        "inst", "unicast", "multicast", "proto", "protocol", "transport", "transportmode", "tcp", "enablesrtp",
        "latency", "mode", "resolution", "codec", "videocodec", "fps", "framerate", "width", "height", "audio",
    }
)  # fmt: skip
# A public parameter's value is shown only when it looks like a channel, a codec or a size: short, plain, and
# (decoded) without '=' or '&' (that would be 'channel=1_password=x' or 'profile=a%26token%3Dx').
_PUBLIC_VALUE_RE = re.compile(r"[A-Za-z0-9._~\-:,+%]{0,32}")
_CAMERA_SCHEME_RE = re.compile(r"(?i:rtsp[stu]?|https?|rtmps?|srt):")
# Every 'name=value' of a camera URL: after a '/', ';' or '&' in the path (a value ends at the query's '?'),
# after a '?', '&', ';' or '#' in the query and fragment. The name may be empty or percent-encoded.
_PATH_PARAM_RE = re.compile(rf"(?<=[/;&])(?P<key>[^/?&;=#\s]*)=(?P<value>(?:(?!{_CLOSING_QUOTE})[^&\s#;?])*)")
_QUERY_PARAM_RE = re.compile(rf"(?<=[?&;#])(?P<key>[^?&;=#\s]*)=(?P<value>(?:(?!{_CLOSING_QUOTE})[^&\s#;])*)")
# A camera URL inside free text: from its scheme to whitespace or a closing quote.
_CAMERA_URL_RE = re.compile(
    rf"(?P<scheme>\b(?i:rtsp[stu]?|https?|rtmps?|srt):/{{0,2}})(?P<rest>(?:(?!{_CLOSING_QUOTE})\S)*)"
)


def _is_public(key: str, value: str) -> bool:
    if unquote_plus(key).lower() not in PUBLIC_PARAMS or not _PUBLIC_VALUE_RE.fullmatch(value):
        return False
    return not any(c in unquote_plus(value) for c in "=&;@")


def _masked_params(rest: str) -> list[re.Match[str]]:
    """The parameters of a camera URL's ``rest`` (after scheme and userinfo) whose values are masked."""
    path, params = re.match(r"([^?#]*)(.*)", rest, re.DOTALL).groups()
    found = [m for m in _PATH_PARAM_RE.finditer(path) if not _is_public(m.group("key"), m.group("value"))]
    found += [m for m in _QUERY_PARAM_RE.finditer(params) if not _is_public(m.group("key"), m.group("value"))]
    return found


def _mask_camera_params(rest: str) -> str:
    """``rest`` of a camera URL with every parameter value masked but the public ones (fail-closed)."""
    path, params = re.match(r"([^?#]*)(.*)", rest, re.DOTALL).groups()

    def mask(m: re.Match[str]) -> str:
        return m.group(0) if _is_public(m.group("key"), m.group("value")) else m.group("key") + "=" + REDACTED

    return _PATH_PARAM_RE.sub(mask, path) + _QUERY_PARAM_RE.sub(mask, params)


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """``(scheme, userinfo, rest)``: userinfo is everything after the scheme up to the last ``@`` (None
    without one). Without a scheme, ``user:password@host`` still counts as userinfo."""
    m = _SCHEME_RE.match(url)
    scheme = m.group(0) if m else ""
    userinfo, at, rest = url[len(scheme):].rpartition("@")
    if at and (scheme or ":" in userinfo):
        return scheme, userinfo, rest
    return scheme, None, url[len(scheme):]


def _redact_params(text: str) -> str:
    return _QUERY_SECRET_RE.sub(lambda m: m.group("key") + "=" + REDACTED, text)


def _redact_encoded_keys(params: str) -> str:
    def mask(m: re.Match[str]) -> str:
        name = unquote_plus(m.group("key")).lower()
        secret = name in _SECRET_QUERY_KEYS or re.split(r"[-_.]", name)[-1] in _SECRET_QUERY_KEYS
        return m.group("key") + "=" + REDACTED if secret else m.group(0)

    return _ENCODED_KEY_RE.sub(mask, params)


def _quoted(value: str, quote: str | None) -> str:
    return f"{quote}{value}{quote}" if quote else value


def redact_url(url: str) -> str:
    """Return ``url`` with its userinfo and parameter values replaced by ``***``: for a camera URL every
    value but those of :data:`PUBLIC_PARAMS`, for others the secret-looking ones.

    Everything between the scheme and the last ``@`` counts as userinfo, even where a strict parse would end
    it sooner (a password typed with a raw ``/``, ``?`` or ``#``) or where the ``//`` is missing. The rest is
    kept as written. A secret in a path segment of its own (``rtsps://host:7441/TOKEN``) is not recognised.
    Never raises.
    """
    scheme, userinfo, rest = _split_userinfo(url)
    if _CAMERA_SCHEME_RE.match(scheme):
        rest = _mask_camera_params(rest)
    if userinfo is not None:
        rest = REDACTED + "@" + rest
    # a path value ('/user=admin') ends at the query's '?'; a query value may hold a '?'
    path, params = re.match(r"([^?#]*)(.*)", rest, re.DOTALL).groups()
    return scheme + _redact_params(path) + _redact_encoded_keys(_redact_params(params))


def redact_text(text: str, *secrets: str) -> str:
    """Redact every URL userinfo and secret parameter value inside free text, plus any literal ``secrets``.

    A camera URL in the text (up to whitespace or a closing quote) has its parameters masked as
    :func:`redact_url` masks them; elsewhere only values under a secret-looking name are (``password=``,
    ``"token": ...``, an ``Authorization:`` header), so that caps and properties stay readable.

    Pass the user name and password of the current camera as ``secrets`` so that messages which quote them
    outside a URL (some RTSP servers echo the user name) are covered too.
    """
    if not text:
        return text
    out = _USERINFO_RE.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
    # a camera URL quoted in the text is masked as redact_url masks it (fail-closed); elsewhere, secret names
    out = _CAMERA_URL_RE.sub(lambda m: m.group("scheme") + _mask_camera_params(m.group("rest")), out)
    out = _redact_params(out)
    out = _MAPPING_SECRET_RE.sub(lambda m: m.group("key") + _quoted(REDACTED, m.group("vq")), out)
    out = _AUTH_HEADER_RE.sub(lambda m: m.group("key") + REDACTED, out)
    for secret in secrets:
        if secret and len(secret) >= 3:
            out = out.replace(secret, REDACTED)
    return out


def url_secrets(url: str) -> tuple[str, ...]:
    """The user name and password of ``url`` (percent-decoded and raw), and the values of the parameters
    :func:`redact_url` masks (query or path), for :func:`redact_text`."""
    scheme, userinfo, rest = _split_userinfo(url)
    found: list[str] = []
    if userinfo is not None:  # as redact_url reads it: up to the last '@'
        raw_user, _, raw_pw = userinfo.partition(":")
        found += [raw_user, raw_pw]
    if _CAMERA_SCHEME_RE.match(scheme):
        found += [m.group("value") for m in _masked_params(rest)]
    found += [m.group("value") for m in _QUERY_SECRET_RE.finditer(rest)]
    found += [m.group("value") for m in _SECRET_VALUE_RE.finditer(rest)]
    found += [unquote(s) for s in found]
    # longest first: redact_text replaces in this order, and a shorter one may be part of a longer one
    return tuple(sorted((s for s in dict.fromkeys(found) if s), key=len, reverse=True))


def carries_redaction_mask(url: str) -> bool:
    """True when ``url`` has the mask ``***`` as its userinfo, user name or password, or as the value of a
    parameter: a copy of a redacted URL (what a GET returned), whose credentials are lost. Sending it back
    would store ``***`` as the password. A password that merely contains ``***`` does not count."""

    def masked(part: str) -> bool:
        return REDACTED in (part, unquote(part))

    _scheme, userinfo, rest = _split_userinfo(url)
    if userinfo is not None and (masked(userinfo) or any(masked(p) for p in userinfo.split(":", 1))):
        return True
    path, params = re.match(r"([^?#]*)(.*)", rest, re.DOTALL).groups()
    values = [m.group("value") for m in _PATH_PARAM_RE.finditer(path)]
    values += [m.group("value") for m in _QUERY_PARAM_RE.finditer(params)]
    return any(masked(v) for v in values)
