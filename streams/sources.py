"""Source URIs: parse and validate them, and describe the GStreamer pipeline that decodes each kind.

Three kinds of source are accepted, all decoded by the same appsink tail:

* ``rtsp://host[:port]/path`` and ``rtsps://...`` cameras (``user:password@`` allowed, never logged);
  transport (``"tcp"`` or ``"udp"``) and jitter-buffer latency are arguments, not URL parameters, because
  the URL's own query string belongs to the camera. The schemes of RFC 2326 that name a transport decide it
  instead: ``rtspt://`` is RTP over TCP, ``rtspu://`` over UDP (without the TCP fallback of ``"udp"``);
  GStreamer never tries a transport that its URL's scheme excludes.
* local video files: a path or a ``file://`` URI (anything ``decodebin`` can demux and decode).
* ``test:<pattern>`` GStreamer test patterns with moving content, e.g. ``test:ball`` or
  ``test:smpte?width=1280&height=720&fps=30&live=1``; patterns are videotestsrc's names; every pattern
  except ``ball`` scrolls horizontally so that consecutive frames differ.

A malformed URI raises :class:`dp.ConfigError` before any pipeline is built; messages carry redacted URLs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from urllib.parse import parse_qsl, unquote, urlsplit

from dp.errors import ConfigError

from .redact import redact_url

TEST_PATTERNS = frozenset(
    {
        "smpte", "snow", "black", "white", "red", "green", "blue", "checkers-1", "checkers-2", "checkers-4",
        "checkers-8", "circular", "blink", "smpte75", "zone-plate", "gamut", "chroma-zone-plate", "solid-color",
        "ball", "smpte100", "bar", "pinwheel", "spokes", "gradient", "colors",
    }
)  # fmt: skip
TRANSPORTS = {"tcp": 4, "udp": 1}  # GstRTSPLowerTrans flag values


@dataclass(frozen=True)
class SourceSpec:
    """A validated source. ``display`` is safe to log (credentials redacted)."""

    kind: str  # "rtsp" | "file" | "test"
    # the URL (with credentials: never log it), a file path, or the pattern name; kept out of repr(), which
    # logs and tracebacks print
    location: str = field(repr=False)
    display: str
    width: int | None = None
    height: int | None = None
    fps: Fraction | None = None
    live: bool = False
    # RTSP: the transport the URL's scheme requires ("tcp" for rtspt://, "udp" for rtspu://), else None
    transport: str | None = None

    @property
    def is_live(self) -> bool:
        return self.kind == "rtsp" or self.live


def parse_source(uri: str | os.PathLike) -> SourceSpec:
    """Validate ``uri`` and say what it is; raise :class:`ConfigError` for anything malformed."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigError("source URI is empty; give an rtsp:// URL, a video file path or test:<pattern>")
    uri = uri.strip()
    lower = uri.lower()
    if lower.startswith(("rtsp://", "rtsps://", "rtspt://", "rtspu://")):
        return _parse_rtsp(uri)
    if lower.startswith(("rtsp:", "rtsps:", "rtspt:", "rtspu:")):  # 'rtsp:user:pw@host', 'rtsp:/host'
        raise ConfigError(f"source {redact_url(uri)!r}: malformed RTSP URL; write rtsp://host[:port]/path")
    if lower.startswith("test:"):
        return _parse_test(uri)
    if lower.startswith("file://"):
        path = unquote(urlsplit(uri).path)
        return _parse_file(path, uri)
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        raise ConfigError(
            f"source {redact_url(uri)!r}: unsupported scheme {scheme!r}; use rtsp://, rtsps://, file:// "
            "or test:<pattern>"
        )
    return _parse_file(uri, uri)


def _parse_rtsp(uri: str) -> SourceSpec:
    display = redact_url(uri)
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # an unbalanced IPv6 bracket: the message quotes no part of the URL
        raise ConfigError(f"source {display!r}: malformed RTSP URL ({exc}); expected rtsp://host[:port]/path") from None
    if "@" in parts.path + parts.query + parts.fragment or parts.netloc.count("@") > 1:
        # rtsp://user:pa/ss@host/ parses as host 'user', port 'pa' and a path: a password was meant. Checked
        # before the port, whose error would quote the 'pa'. In rtsp://user:p@ss@host/ Python ends the
        # password at the last '@' and GStreamer at the first (host 'ss@host'): refused too.
        raise ConfigError(
            f"source {display!r}: malformed RTSP URL, '@' after the host; percent-encode '/', '?', '#' and '@' "
            "in a user name or password (%2F, %3F, %23, %40), and '@' in a path (%40)"
        )
    try:
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(
            f"source {display!r}: malformed RTSP URL ({exc}); expected rtsp://host[:port]/path"
        ) from None
    if not parts.hostname:
        raise ConfigError(
            f"source {display!r}: malformed RTSP URL, no host; expected rtsp://host[:port]/path"
        )
    if port == 0:
        raise ConfigError(f"source {display!r}: port 0 is not a valid RTSP port")
    if any(c.isspace() for c in uri):
        raise ConfigError(f"source {display!r}: malformed RTSP URL, it contains whitespace")
    transport = {"rtspt": "tcp", "rtspu": "udp"}.get(parts.scheme.lower())
    return SourceSpec(kind="rtsp", location=uri, display=display, transport=transport)


def _parse_test(uri: str) -> SourceSpec:
    body = uri[len("test:") :]
    pattern, _, query = body.partition("?")
    pattern = pattern.strip() or "ball"
    if pattern not in TEST_PATTERNS:
        raise ConfigError(f"source {uri!r}: unknown test pattern {pattern!r}; one of {sorted(TEST_PATTERNS)}")
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - {"width", "height", "fps", "live"}
    if unknown:
        raise ConfigError(
            f"source {uri!r}: unknown parameter(s) {sorted(unknown)}; allowed: width, height, fps, live"
        )
    try:
        width = int(params.get("width", 320))
        height = int(params.get("height", 240))
        fps = Fraction(params.get("fps", "30")).limit_denominator(1001)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"source {uri!r}: width, height must be integers and fps a number") from None
    if not (16 <= width <= 8192 and 16 <= height <= 8192) or not (0 < fps <= 240):
        raise ConfigError(f"source {uri!r}: need 16 <= width, height <= 8192 and 0 < fps <= 240")
    live = params.get("live", "0").lower() in {"1", "true", "yes"}
    return SourceSpec(
        kind="test", location=pattern, display=uri, width=width, height=height, fps=fps, live=live
    )


def _parse_file(path: str, uri: str) -> SourceSpec:
    if not os.path.isfile(path):
        raise ConfigError(f"source {redact_url(uri)!r}: no such video file")
    return SourceSpec(kind="file", location=os.path.abspath(path), display=redact_url(uri))


def decode_description(spec: SourceSpec, *, channels: int, convert_threads: int, i420: bool = False) -> str:
    """The gst-launch description from source to ``appsink name=sink`` (the source is named ``src``).

    Locations are *not* in the description: the caller sets them as properties, so no URL is ever parsed
    (or quoted in a parse error) by GStreamer.
    """
    # I420: what H.264 decoders output, so videoconvert passes the buffers through untouched
    fmt = "I420" if i420 else "RGB" if channels == 3 else "GRAY8"
    tail = (
        f"videoconvert name=convert n-threads={convert_threads} ! video/x-raw,format={fmt} ! "
        "appsink name=sink"
    )
    if spec.kind == "test":
        speed = 0 if spec.location == "ball" else 4
        rate = f"{spec.fps.numerator}/{spec.fps.denominator}"
        # videotestsrc renders RGB/GRAY8 itself; the capsfilter is named so a test server can resize it live.
        return (
            f"videotestsrc name=src pattern={spec.location} is-live={str(spec.live).lower()} "
            f"horizontal-speed={speed} ! capsfilter name=size caps=video/x-raw,width={spec.width},"
            f"height={spec.height},framerate={rate} ! {tail}"
        )
    if spec.kind == "file":
        # parsebin, so that FrameSource picks the stream: the first video stream goes to decodebin, any
        # other is read and dropped (decodebin alone would decode a file's audio too, for nothing). parsebin
        # drops the errors of an element it is still bringing up: FrameSource._hold_first_buffer keeps a
        # demuxer from failing that early
        return f"filesrc name=src ! parsebin name=parse  decodebin name=dec ! {tail}"
    return f"rtspsrc name=src ! decodebin name=dec ! {tail}"
