"""Audit of the privatized re-stream (streams/restream.py, streams/rtsp_server.py) against real GstRtspServer
servers on loopback, read by GStreamer clients and by a minimal hand-written RTSP client (for what a player
does and rtspsrc does not: PAUSE, keep a session open, drop the connection)."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from dp import Pixelizer, PixelizeSpec, Release
from dp.errors import ConfigError
from streams import EncoderSettings, iter_frames
from streams.gst import Gst
from streams.rtsp_server import LocalRtspServer, _client_host
from streams.testing import wait_for

# eps large and m=1: a release of a flat frame is flat to within a level, so releases of different greys
# are told apart by their mean alone
SPEC = PixelizeSpec(eps_pix=1000.0, m_pixels=1, channels=3, layout="fixed", cell_size=16)
ENC = EncoderSettings(quality=8, key_int_max=30)


class Viewer:
    """A GStreamer client (`iter_frames` on `url`) on a thread of its own: `frames` holds what `keep` made of
    each frame it decoded, `errors` what ended it."""

    def __init__(self, url: str, keep, **options) -> None:
        self.frames: list = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, keep, options), daemon=True)
        self._thread.start()

    def _read(self, url: str, keep, options: dict) -> None:
        try:
            for frame in iter_frames(url, **options):
                self.frames.append(keep(frame))
                if self._stop.is_set():
                    return
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)

    def stop(self, wake=None, timeout_s: float = 20) -> bool:
        """Stop reading (`wake()`: make the server send a frame, so the reader sees the stop); True once the
        thread has ended."""
        self._stop.set()
        if wake is not None:
            wake()
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def release_of(level: int, index: int = 0, size: tuple[int, int] = (64, 64)) -> Release:
    frame = np.full((*size, 3), level, np.uint8)
    frame.flags.writeable = False  # like decoded frames (and the kernels compiled for them)
    return Pixelizer(SPEC, backend="cpu").release(frame, camera_id="audit", frame_index=index)


class RtspClient:
    """A bare RTSP/1.0 client over TCP (RTP interleaved on the same connection, read and dropped)."""

    def __init__(self, url: str, port: int, host: str = "127.0.0.1", timeout_s: float = 30.0) -> None:
        self.url = url
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.cseq = 0
        self.session: str | None = None
        self._buf = b""

    def request(self, method: str, url: str | None = None, *headers: str) -> str:
        """Send one request; return the status line of its response."""
        self.cseq += 1
        lines = [f"{method} {url or self.url} RTSP/1.0", f"CSeq: {self.cseq}", *headers]
        if self.session:
            lines.append(f"Session: {self.session}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return self._response()

    def play(self) -> None:
        assert self.request("DESCRIBE", None, "Accept: application/sdp").endswith("200 OK")
        setup = self.request("SETUP", self.url + "/stream=0", "Transport: RTP/AVP/TCP;unicast;interleaved=0-1")
        assert setup.endswith("200 OK")
        assert self.request("PLAY").endswith("200 OK")

    def _recv(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self._buf += data

    def _response(self) -> str:
        while True:
            if self._buf[:1] == b"$":  # an interleaved RTP/RTCP packet: skip it
                if len(self._buf) < 4:
                    self._recv()
                    continue
                n = int.from_bytes(self._buf[2:4], "big")
                if len(self._buf) < 4 + n:
                    self._recv()
                    continue
                self._buf = self._buf[4 + n:]
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0 or not self._buf:
                self._recv()
                continue
            head, rest = self._buf[:end].decode(), self._buf[end + 4:]
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "session":
                    self.session = value.strip().split(";")[0]
            while len(rest) < length:
                self._buf = rest
                self._recv()
                rest = self._buf
            self._buf = rest[length:]
            return head.split("\r\n")[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients():
    made: list[RtspClient] = []
    yield made
    for client in made:
        client.close()


def not_playing(private) -> int:
    """How many of a mount's clients' media are out of PLAYING (reads the mount's internals)."""
    with private._lock:
        srcs = list(private._appsrcs)
    return sum(src.get_state(0)[1] != Gst.State.PLAYING for src in srcs)


def mean_level(frames) -> float:
    return float(np.mean(frames[-1].array))


def test_a_raw_mount_cannot_take_a_private_mount_path(rtsp_server, tmp_path):
    """add_factory replaces a mount silently: a test pattern or file served at /<camera>/private replaced the
    camera's privatized stream with raw input (or sat there before the camera started)."""
    private = rtsp_server.serve_private("lobby", keepalive_s=0.2, encoder=ENC)
    private(release_of(60))
    with pytest.raises(ConfigError, match="reserved"):
        rtsp_server.serve_test_pattern("/lobby/private", pattern="smpte")
    with pytest.raises(ConfigError, match="reserved"):
        rtsp_server.serve_file("/lobby/private", str(tmp_path / "clip.mp4"))
    with pytest.raises(ConfigError, match="reserved"):
        rtsp_server.serve_test_pattern("/later/private")  # a camera that starts later would get it
    frames = list(iter_frames(rtsp_server.url("/lobby/private"), max_frames=2, first_frame_timeout_s=30))
    assert abs(mean_level(frames) - 60) < 4  # still the release, not the test pattern


def test_one_release_reaches_a_new_client_and_each_release_its_watchers_at_once(rtsp_server):
    """With keepalive off nothing is pushed twice: x264 took framerate=0/1 as variable-rate input and held one
    frame back, so a client connecting after a single release never started (DESCRIBE: 503) and a watching
    client saw every release only when the next one came."""
    private = rtsp_server.serve_private("once", keepalive_s=0.0, encoder=ENC)
    private(release_of(60))
    viewer = Viewer(rtsp_server.url("/once/private"), lambda frame: float(np.mean(frame.array)),
                    first_frame_timeout_s=15, stall_timeout_s=15)
    got, errors = viewer.frames, viewer.errors
    try:
        assert wait_for(lambda: bool(got) or bool(errors), 30), "no frame, no error"
        assert not errors, f"the client got no frame of the only release: {errors[0]!r}"
        assert abs(got[0] - 60) < 4
        pushed = private.frames_pushed
        private(release_of(200, 1))  # one push, and nothing after it
        assert wait_for(lambda: any(abs(v - 200) < 4 for v in got) or bool(errors), 15), (
            f"a watching client did not see the new release (pushes {pushed} -> {private.frames_pushed}, "
            f"levels seen {sorted({round(v) for v in got})}, errors {errors})"
        )
    finally:
        stopped = viewer.stop(wake=lambda: private(release_of(200, 2)))
    assert stopped


def test_a_paused_client_does_not_make_the_others_encode_at_the_poll_rate(rtsp_server, clients):
    """A client out of PLAYING was counted as 'starting' forever, and every 20 ms poll for it pushed the latest
    frame again to every playing client (about 50 encodes a second each, whatever the release rate)."""
    private = rtsp_server.serve_private("pause", keepalive_s=60.0, encoder=ENC)
    url = rtsp_server.url("/pause/private")
    done = threading.Event()

    def feed() -> None:  # releases while the clients start (the old code needed two pushes to start one)
        index = 0
        while True:
            private(release_of(60, index))
            index += 1
            if done.wait(0.1):
                return

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        paused = RtspClient(url, rtsp_server.port)
        clients.append(paused)
        paused.play()
        assert wait_for(lambda: private.frames_pushed >= 3, 30)  # well into PLAYING: a PAUSE sent at once can lose
        assert paused.request("PAUSE").endswith("200 OK")  # to the media's own way to PLAYING
        assert wait_for(lambda: not_playing(private) == 1, 10)
        playing = RtspClient(url, rtsp_server.port)
        clients.append(playing)
        playing.play()
        assert wait_for(lambda: private.clients == 2 and private.frames_pushed >= 4, 30)
    finally:
        done.set()
        feeder.join(10)
    assert not feeder.is_alive()
    releases = private.releases_seen
    assert not_playing(private) == 1  # the paused client is still paused
    before = private.frames_pushed
    # no release and a 60 s keepalive: nothing is due, so nothing may be pushed at all
    assert not wait_for(lambda: private.frames_pushed > before + 3, 2.0), (
        f"{private.frames_pushed - before} pushes in 2 s with no release due"
    )
    assert private.releases_seen == releases


def test_removing_a_private_mount_ends_its_clients_sessions(rtsp_server, clients):
    """A camera removed while a player kept its session alive left the session and its media pipeline (an
    encoder per client) behind until the player left on its own; other mounts' clients are kept."""
    gone = rtsp_server.serve_private("gone", keepalive_s=0.2, encoder=ENC)
    kept = rtsp_server.serve_private("kept", keepalive_s=0.2, encoder=ENC)
    gone(release_of(60))
    kept(release_of(200))
    viewer = RtspClient(rtsp_server.url("/gone/private"), rtsp_server.port)
    other = RtspClient(rtsp_server.url("/kept/private"), rtsp_server.port)
    clients += [viewer, other]
    viewer.play()
    other.play()
    pool = rtsp_server.server.get_session_pool()
    assert wait_for(lambda: gone.clients == 1 and kept.clients == 1 and pool.get_n_sessions() == 2, 30)
    rtsp_server.remove("/gone/private")
    assert wait_for(lambda: pool.get_n_sessions() == 1, 10), f"{pool.get_n_sessions()} sessions left"
    assert viewer.request("GET_PARAMETER").endswith("454 Session Not Found")
    assert other.request("GET_PARAMETER").endswith("200 OK")
    assert kept.clients == 1


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_the_url_of_an_ipv6_server_is_bracketed_and_plays():
    """url() wrote rtsp://::1:<port>/...: no client can parse that (public_url bracketed, url did not)."""
    server = LocalRtspServer(port=0, host="::1").start()
    try:
        private = server.serve_private("six", keepalive_s=0.2, encoder=ENC)
        private(release_of(60))
        url = server.url("/six/private")
        assert url == f"rtsp://[::1]:{server.port}/six/private"
        frames = list(iter_frames(url, max_frames=2, first_frame_timeout_s=30))
        assert abs(mean_level(frames) - 60) < 4
    finally:
        server.stop()


@pytest.mark.parametrize(("host", "client"), [("0.0.0.0", "127.0.0.1"), ("", "127.0.0.1"), ("::", "[::1]"),
                                             ("::1", "[::1]"), ("[::1]", "[::1]"), ("127.0.0.1", "127.0.0.1")])
def test_the_local_url_of_a_wildcard_server_is_loopback(host, client):
    """The host that url() gives a local client (tests never listen on all interfaces, so no server is made)."""
    assert _client_host(host) == client


def test_a_client_connecting_before_the_first_release_gets_it(rtsp_server):
    private = rtsp_server.serve_private("early", keepalive_s=0.0, encoder=ENC)
    viewer = Viewer(rtsp_server.url("/early/private"), lambda frame: frame, max_frames=1, first_frame_timeout_s=30)
    assert wait_for(lambda: private.clients == 1, 15)
    private(release_of(120))
    assert wait_for(lambda: bool(viewer.frames) or bool(viewer.errors), 40)
    assert viewer.stop()
    assert not viewer.errors and viewer.frames and abs(mean_level(viewer.frames) - 120) < 4


def test_a_watching_client_follows_a_resolution_change(rtsp_server):
    private = rtsp_server.serve_private("size", keepalive_s=0.1, encoder=ENC)
    private(release_of(60))
    viewer = Viewer(rtsp_server.url("/size/private"), lambda frame: frame.array.shape, first_frame_timeout_s=30)
    shapes, errors = viewer.frames, viewer.errors
    try:
        assert wait_for(lambda: bool(shapes) or bool(errors), 40) and not errors
        private(release_of(200, 1, size=(48, 80)))
        assert wait_for(lambda: (48, 80, 3) in shapes or bool(errors), 20), (shapes[-3:], errors)
    finally:
        viewer.stop()
    assert not errors


def test_a_vanished_udp_client_loses_its_session_and_media():
    """A player gone without a TEARDOWN (power cut, dropped network: its TCP connection stays open and silent,
    its RTCP stops) kept its session and media pipeline for the life of the server: GstRtspServer removes
    expired sessions only when the pool is cleaned up, and nothing did."""
    server = LocalRtspServer(port=0, session_timeout_s=2).start()
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = None
    try:
        rtp.bind(("127.0.0.1", 0))
        rtcp.bind(("127.0.0.1", 0))
        private = server.serve_private("udp", keepalive_s=0.2, encoder=ENC)
        private(release_of(60))
        url = server.url("/udp/private")
        client = RtspClient(url, server.port)
        assert client.request("DESCRIBE").endswith("200 OK")
        ports = f"{rtp.getsockname()[1]}-{rtcp.getsockname()[1]}"
        assert client.request("SETUP", url + "/stream=0", f"Transport: RTP/AVP;unicast;client_port={ports}").endswith(
            "200 OK"
        )
        assert client.request("PLAY").endswith("200 OK")
        rtp.settimeout(30)
        assert rtp.recv(65536)  # the stream reaches the player
        pool = server.server.get_session_pool()
        assert private.clients == 1 and pool.get_n_sessions() == 1
        rtp.close()
        rtcp.close()  # the player is gone; its RTSP connection stays open and says nothing
        assert wait_for(lambda: private.clients == 0 and pool.get_n_sessions() == 0, 30), (
            f"clients={private.clients} sessions={pool.get_n_sessions()}"
        )
    finally:
        if client is not None:
            client.close()
        rtp.close()
        rtcp.close()
        server.stop()
