"""A local RTSP server (GstRtspServer) for tests and the demo: test patterns, files and privatized mounts.

::

    with LocalRtspServer(port=0) as server:                       # port 0: a free port is chosen
        server.serve_test_pattern("/cam", pattern="ball", width=320, height=240, fps=30)
        url = server.url("/cam")                                  # rtsp://127.0.0.1:<port>/cam
        private = server.serve_private("lobby")                   # rtsp://127.0.0.1:<port>/lobby/private
        worker = CameraWorker("lobby", url, spec, ledger=..., sinks=[private])

Sources served here (test patterns, files) stand in for cameras; no method re-serves a camera's input,
and a private mount accepts only :class:`dp.Release` objects. The server listens on 127.0.0.1 by default
and runs its GLib main loop on its own thread. ``auth=(user, password)`` makes every mount require HTTP
Basic credentials (to test refused credentials and their redaction).

Run it standalone (the demo, and tests that kill the server process)::

    python -m streams.rtsp_server --port 8554 --mount /cam --pattern ball --width 1280 --height 720
    python -m streams.rtsp_server --port 8554 --mount /cam --file clip.mp4

It prints ``READY rtsp://127.0.0.1:<port>/<mount>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from dp.errors import ConfigError, IngestError

from .gst import Gio, GLib, Gst, GstRtspServer, ensure_init
from .restream import PrivateMount
from .sources import TEST_PATTERNS, parse_source
from .writer import EncoderSettings

log = logging.getLogger(__name__)

__all__ = ["LocalRtspServer", "TestPatternMount"]

_MOUNT_RE = re.compile(r"^(/[A-Za-z0-9_.\-]+)+$")
_CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PRIVATE_LEAF = "/private"  # /<camera_id>/private: only privatized mounts may take such a path
_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # what a local client connects to


def _dot_segment(path: str) -> bool:
    """True when a segment of ``path`` is ``.`` or ``..``: a client's URL resolution would rewrite it."""
    return any(segment in (".", "..") for segment in path.split("/"))


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (once)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _client_host(host: str) -> str:
    """What a client on this machine connects to for a server listening on ``host``, as a URL writes it."""
    return _url_host(_WILDCARD_HOSTS.get(host, host))


@dataclass
class TestPatternMount:
    """Handle on a served test pattern: :meth:`set_resolution` changes the stream's size mid-stream."""

    __test__ = False  # not a pytest test class
    path: str
    factory: GstRtspServer.RTSPMediaFactory
    width: int
    height: int
    fps: int

    def __post_init__(self) -> None:
        _check_even_size(self.width, self.height)
        # the capsfilter of each media now prepared (one while clients share it); removed when it is unprepared
        self._capsfilters: list[Gst.Element] = []
        self._lock = threading.Lock()

    def _caps(self) -> Gst.Caps:
        return Gst.Caps.from_string(
            f"video/x-raw,width={self.width},height={self.height},framerate={self.fps}/1"
        )

    def set_resolution(self, width: int, height: int) -> None:
        """Switch every current client (and later ones) to ``width`` x ``height``; the encoder renegotiates.
        Both must be even (H.264 4:2:0)."""
        _check_even_size(width, height)
        with self._lock:
            self.width, self.height = width, height
            filters = list(self._capsfilters)
        for capsfilter in filters:
            capsfilter.set_property("caps", self._caps())

    def _on_media_configure(self, _factory, media) -> None:
        capsfilter = media.get_element().get_by_name("size")
        capsfilter.set_property("caps", self._caps())
        with self._lock:
            self._capsfilters.append(capsfilter)
        # a shared media is unprepared once its last client has left, and never used again: without this, every
        # media the mount ever made stayed in the list, with its pipeline's elements
        media.connect("unprepared", lambda _media: self._forget(capsfilter))

    def _forget(self, capsfilter: Gst.Element) -> None:
        with self._lock:
            self._capsfilters = [c for c in self._capsfilters if c is not capsfilter]


def _check_even_size(width: int, height: int) -> None:
    """x264 encodes 4:2:0 only: an odd size failed every client's media (503), and a camera worker reading the
    mount reconnected forever."""
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ConfigError(f"width={width!r}, height={height!r}: a served test pattern needs even, positive sizes "
                          f"(H.264 4:2:0); use {max(2, width + width % 2)}x{max(2, height + height % 2)}")


class LocalRtspServer:
    """GstRtspServer on ``host`` (127.0.0.1) and ``port`` (0 = any free port), run on its own thread."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        auth: tuple[str, str] | None = None,
        tls: tuple[str, str] | None = None,
        public_host: str | None = None,
        session_timeout_s: int = 60,
    ) -> None:
        """``auth``: (user, password) for RTSP basic authentication. ``tls``: (certificate file, private
        key file), both PEM: every connection is then RTSP over TLS and :meth:`url` gives ``rtsps://``.
        ``public_host``: the host :meth:`public_url` gives clients elsewhere (default: ``host``, or this
        machine's name when ``host`` is a wildcard address, which no client can connect to).
        ``session_timeout_s``: a session its client no longer keeps alive (RTCP, RTSP keepalives) is removed,
        with its media pipeline, this long after the client was last heard from.

        The port is bound here (as :class:`socketserver.TCPServer` does), so :attr:`port` and :meth:`url` are
        right before :meth:`start`; raises :class:`IngestError` if it is taken. Until :meth:`start`, clients
        that connect wait."""
        ensure_init()
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"port={port!r} must be within 0..65535")
        if not 1 <= int(session_timeout_s) <= 3600:
            raise ConfigError(f"session_timeout_s={session_timeout_s!r} must be within 1..3600")
        self.session_timeout_s = int(session_timeout_s)
        self.host = host
        if public_host is None:
            public_host = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        self.public_host = public_host
        self._auth = auth
        self.server = GstRtspServer.RTSPServer.new()
        self.server.set_address(host)
        self.server.set_service(str(int(port)))
        self._mounts = self.server.get_mount_points()
        # One thread per client connection (the default is a single thread for all clients, where one
        # client's slow media preparation delays every other client's RTSP responses).
        self.server.get_thread_pool().set_max_threads(64)
        self.server.connect("client-connected", self._on_client_connected)
        self._context = GLib.MainContext.new()
        self._loop = GLib.MainLoop.new(self._context, False)
        self._thread: threading.Thread | None = None
        self._source_id: int | None = None
        self._private: dict[str, PrivateMount] = {}
        self._private_lock = threading.Lock()  # serve_private's check and add are one step
        self._stopped = False
        self._tls = tls is not None
        if auth is not None or tls is not None:
            self._install_auth(auth, tls)
        try:
            self._listener = self.server.create_source(None)  # binds and listens (port 0: the kernel picks one)
        except GLib.Error as exc:
            raise IngestError(f"RTSP server cannot listen on {host}:{port}: {exc.message}") from None
        self.port = self.server.get_bound_port()

    def _install_auth(self, basic: tuple[str, str] | None, tls: tuple[str, str] | None) -> None:
        auth = GstRtspServer.RTSPAuth.new()
        if basic is not None:
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", "user")
            auth.add_basic(GstRtspServer.RTSPAuth.make_basic(*basic), token)
        else:  # TLS only: clients without credentials get the anonymous role, which may play
            token = GstRtspServer.RTSPToken()
            token.set_string("media.factory.role", "anonymous")
            auth.set_default_token(token)
        if tls is not None:
            cert_file, key_file = (os.fspath(p) for p in tls)
            for path in (cert_file, key_file):
                if not os.path.isfile(path):
                    raise ConfigError(f"tls file {path!r} does not exist (give PEM certificate and key files)")
            try:
                auth.set_tls_certificate(Gio.TlsCertificate.new_from_files(cert_file, key_file))
            except GLib.Error as exc:
                raise ConfigError(f"tls certificate {cert_file!r} / key {key_file!r}: {exc.message}") from None
        self.server.set_auth(auth)

    def _on_client_connected(self, _server, client) -> None:
        client.connect("new-session", lambda _client, session: session.set_timeout(self.session_timeout_s))

    def _cleanup_sessions(self, *_args) -> bool:
        # GstRtspServer removes expired sessions only when asked: without this, a client that vanished
        # without a TEARDOWN (power loss, a dropped network) kept its session, and so its media pipeline
        # (appsrc, encoder, payloader), for the life of the server.
        self.server.get_session_pool().cleanup()
        return True

    def _secure(self, factory: GstRtspServer.RTSPMediaFactory) -> None:
        if self._auth is not None or self._tls:
            role = "user" if self._auth is not None else "anonymous"
            factory.add_role_from_structure(
                Gst.Structure.new_from_string(
                    f"{role}, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"
                )
            )

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalRtspServer:
        """Serve on the port the constructor bound (on the server's own thread); returns at once."""
        if self._thread is not None:
            return self
        if self._stopped:
            raise ConfigError("this RTSP server was stopped; make a new LocalRtspServer")
        listener, self._listener = self._listener, None  # the context holds it now; stop() destroys it by id
        self._source_id = listener.attach(self._context)
        cleanup = GLib.timeout_source_new(int(min(2.0, self.session_timeout_s / 2) * 1000))
        cleanup.set_callback(self._cleanup_sessions)
        cleanup.attach(self._context)
        self._thread = threading.Thread(target=self._loop.run, name=f"dpstream-rtsp-{self.port}", daemon=True)
        self._thread.start()
        log.info("RTSP server listening on %s:%d", self.host, self.port)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Close the listening socket, disconnect clients, tear down every media pipeline. Idempotent."""
        with self._private_lock:  # a serve_private racing this one either lands in `mounts` or is refused
            if self._stopped:
                return
            self._stopped = True
            mounts = list(self._private.values())
        for mount in mounts:
            mount.close()
        if self._thread is None:
            listener, self._listener = self._listener, None
            listener.destroy()  # never started: the socket closes with its last reference (this one)
            return
        done = threading.Event()

        def _shutdown(*_args) -> bool:
            source = self._context.find_source_by_id(self._source_id) if self._source_id else None
            if source is not None:
                source.destroy()  # closes the listening socket
            self.server.client_filter(lambda _server, _client, *a: GstRtspServer.RTSPFilterResult.REMOVE)
            pool = self.server.get_session_pool()
            pool.filter(lambda _pool, _session, *a: GstRtspServer.RTSPFilterResult.REMOVE)
            done.set()
            return False

        idle = GLib.idle_source_new()
        idle.set_callback(_shutdown)
        idle.attach(self._context)
        done.wait(timeout_s)
        # Let the loop run the teardown the filters scheduled (media to NULL), then quit.
        quit_source = GLib.timeout_source_new(100)
        quit_source.set_callback(lambda *a: (self._loop.quit(), False)[1])
        quit_source.attach(self._context)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("RTSP server on %s:%d: its main loop did not end within %.1f s (a media pipeline did not "
                        "stop)", self.host, self.port, timeout_s)
            return
        log.info("RTSP server on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> LocalRtspServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- mounts ------------------------------------------------------------------------------------
    def url(self, mount: str, *, user: str | None = None, password: str | None = None) -> str:
        """The ``rtsp://`` (``rtsps://`` with TLS) URL of ``mount`` for a client on this machine (with
        credentials if given: never log it). A wildcard ``host`` gives the loopback address; an IPv6 address is
        bracketed."""
        userinfo = f"{user}:{password}@" if user is not None else ""
        host = _client_host(self.host)
        return f"{'rtsps' if self._tls else 'rtsp'}://{userinfo}{host}:{self.port}{mount}"

    def public_url(self, mount: str) -> str:
        """The URL of ``mount`` for clients on other machines (never with credentials)."""
        return f"{'rtsps' if self._tls else 'rtsp'}://{_url_host(self.public_host)}:{self.port}{mount}"

    def _check_mount(self, mount: str) -> None:
        if not _MOUNT_RE.match(mount) or _dot_segment(mount):
            raise ConfigError(f"mount={mount!r} must look like /name or /name/sub (letters, digits, _ . -; "
                              "not . or ..)")
        if mount.endswith(_PRIVATE_LEAF) or mount in self._private:
            # add_factory replaces a mount silently: camera input served there would reach the viewers of a
            # camera's /<id>/private re-stream (before, after or instead of its releases)
            raise ConfigError(f"mount={mount!r}: paths ending in {_PRIVATE_LEAF!r} are reserved for privatized "
                              "re-streams (serve_private)")

    def serve_test_pattern(
        self,
        mount: str,
        *,
        pattern: str = "ball",
        width: int = 320,
        height: int = 240,
        fps: int = 30,
        encoder: EncoderSettings | None = None,
        audio: bool = False,
    ) -> TestPatternMount:
        """Serve a moving videotestsrc pattern as H.264 (shared by all clients); ``audio=True`` adds a tone as
        AAC, listed before the video, as a camera with a microphone does. ``width`` and ``height`` must be even
        (H.264 4:2:0); :class:`ConfigError` otherwise."""
        self._check_mount(mount)
        _check_even_size(width, height)
        if pattern not in TEST_PATTERNS:
            raise ConfigError(f"pattern={pattern!r}; one of {sorted(TEST_PATTERNS)}")
        encoder = encoder or EncoderSettings(key_int_max=int(fps))
        speed = 0 if pattern == "ball" else 4
        sound = "audiotestsrc is-live=true ! audioconvert ! avenc_aac ! rtpmp4gpay name=pay0 pt=97 " if audio else ""
        factory = GstRtspServer.RTSPMediaFactory.new()
        factory.set_launch(
            f"( {sound}videotestsrc is-live=true pattern={pattern} horizontal-speed={speed} ! capsfilter name=size ! "
            f"videoconvert ! video/x-raw,format=I420 ! {encoder.x264_description()} ! "
            f"rtph264pay name=pay{int(audio)} pt=96 config-interval=-1 )"
        )
        factory.set_shared(True)
        handle = TestPatternMount(mount, factory, width, height, fps)
        factory.connect("media-configure", handle._on_media_configure)
        self._secure(factory)
        self._mounts.add_factory(mount, factory)
        return handle

    def serve_file(self, mount: str, path: str, *, shared: bool = False) -> None:
        """Serve an H.264 MP4 file as is (no re-encoding), paced in real time.

        Each client gets its own pipeline from the start of the file (``shared=False``, the default: every
        client starts on a key frame); ``shared=True`` makes later clients join the first one's playback.
        """
        self._check_mount(mount)
        spec = parse_source(path)
        if spec.kind != "file":
            raise ConfigError(f"serve_file needs a local file, got {spec.display!r}")
        factory = GstRtspServer.RTSPMediaFactory.new()
        factory.set_launch(
            "( filesrc name=file ! qtdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )"
        )
        factory.set_shared(shared)
        factory.connect(
            "media-configure",
            lambda _f, media: media.get_element().get_by_name("file").set_property("location", spec.location),
        )
        self._secure(factory)
        self._mounts.add_factory(mount, factory)

    def serve_private(
        self,
        camera_id: str,
        *,
        encoder: EncoderSettings | None = None,
        keepalive_s: float = 1.0,
        release_fps: float | None = None,
        first_release_wait_s: float = 10.0,
    ) -> PrivateMount:
        """Mount ``/<camera_id>/private`` and return its sink (``Callable[[dp.Release], None]``); the mount
        already there if the camera has one (its settings are kept). The settings: see :class:`PrivateMount`."""
        if not _CAMERA_ID_RE.match(camera_id) or camera_id in (".", ".."):
            raise ConfigError(f"camera_id={camera_id!r}: use 1-64 letters, digits, '_', '.', '-' for a mount "
                              "(not . or .., which are path segments)")
        path = f"/{camera_id}/private"
        with self._private_lock:  # two threads serving one camera get one mount (add_factory replaces silently)
            if self._stopped:  # stop() closed every mount it knew: this one would never be closed
                raise ConfigError(f"RTSP server on port {self.port} was stopped; cannot serve {path!r}")
            if path in self._private:
                return self._private[path]
            mount = PrivateMount(camera_id, path, encoder=encoder, keepalive_s=keepalive_s,
                                 release_fps=release_fps, first_release_wait_s=first_release_wait_s)
            self._secure(mount.factory)
            self._mounts.add_factory(path, mount.factory)
            self._private[path] = mount
        return mount

    def remove(self, mount: str, timeout_s: float = 5.0) -> None:
        """Unmount ``mount``. Clients of a test pattern or file keep their session until they leave; the
        sessions of a privatized mount's clients are ended (its camera is gone: nothing would feed them, and a
        player that keeps its session alive would hold the media pipeline forever)."""
        with self._private_lock:
            self._mounts.remove_factory(mount)
            private = self._private.pop(mount, None)
        if private is not None:
            medias = private.medias()
            private.close()
            if medias:
                self._end_sessions(medias, timeout_s)

    def _end_sessions(self, medias: list, timeout_s: float) -> None:
        """Remove every session that plays one of ``medias`` (on the server's thread, as :meth:`stop` does)."""
        pool = self.server.get_session_pool()

        def plays_one(_pool, session, *_a):
            if any(sm.get_media() in medias for sm in session.filter(None)):
                return GstRtspServer.RTSPFilterResult.REMOVE
            return GstRtspServer.RTSPFilterResult.KEEP

        if self._thread is None or not self._thread.is_alive():
            pool.filter(plays_one)
            return
        done = threading.Event()

        def _remove(*_args) -> bool:
            try:
                pool.filter(plays_one)
            finally:
                done.set()
            return False

        idle = GLib.idle_source_new()
        idle.set_callback(_remove)
        idle.attach(self._context)
        if not done.wait(timeout_s):
            log.warning("RTSP server: the sessions of a removed mount were not ended within %.1f s", timeout_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a test pattern or an H.264 MP4 file over RTSP.")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--file", help="H.264 MP4 to serve (default: a test pattern)")
    parser.add_argument("--pattern", default="ball")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate-kbps", type=int, default=None)
    parser.add_argument("--audio", action="store_true", help="test pattern: add a tone as AAC, as a camera with a "
                        "microphone would (dpstream never requests it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = LocalRtspServer(port=args.port, host=args.host)
    if args.file:
        server.serve_file(args.mount, args.file)
    else:
        encoder = EncoderSettings(key_int_max=args.fps, bitrate_kbps=args.bitrate_kbps,
                                  quality=None if args.bitrate_kbps else 23)  # fmt: skip
        server.serve_test_pattern(
            args.mount,
            pattern=args.pattern,
            width=args.width,
            height=args.height,
            fps=args.fps,
            encoder=encoder,
            audio=args.audio,
        )
    server.start()
    print(f"READY {server.url(args.mount)}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
