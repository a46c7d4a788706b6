"""`dpstream up`: the whole path on one machine, with real components.

An embedded Valkey (append-only, under DPSTREAM_DATA), a local RTSP server publishing a demo camera (a
test pattern encoded as H.264), one worker ingesting it over RTSP like any camera and re-streaming the
releases at `/<camera>/private`, and the API. Ctrl-C or SIGTERM stops everything in reverse order.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from urllib.parse import urlsplit

import typer
import uvicorn

from dp.errors import ConfigError
from service.api import create_app
from service.auth import replace_tokens_named
from service.embedded import EmbeddedValkey
from service.logsetup import UVICORN_LOGGING
from service.models import Camera, new_incarnation
from service.redaction import redact_url
from service.settings import Settings
from service.store import StoredCameraUnreadable, SyncStore
from service.worker_process import WorkerProcess, start_rtsp_server

log = logging.getLogger("dpstream.up")
DEMO_ID = "demo"
DEMO_MOUNT = "/demo-source"  # the RTSP mount of the demo camera's test pattern


def _ensure_demo_camera(store: SyncStore, source: str) -> None:
    try:
        cam = store.get_camera(DEMO_ID)
    except StoredCameraUnreadable as err:  # written by another dpstream version: a new demo (same ledger)
        log.warning("%s; writing a new demo camera", err)
        cam = None
    if cam is None:
        store.put_camera(Camera(id=DEMO_ID, source=source, release_fps=5.0, eps_pix=1.0, m_pixels=16,
                                eps_window=50.0, window_s=10.0, cell_size=16, incarnation=new_incarnation()))
    elif cam.source != source or (not cam.enabled and _is_our_demo(cam.source)):
        # the RTSP port may differ from the last run; a demo that `up --no-demo` disabled streams again
        enabled = cam.enabled or _is_our_demo(cam.source)
        store.put_camera(cam.model_copy(update={"source": source, "enabled": enabled, "version": cam.version + 1}))


def _is_our_demo(source: str) -> bool:
    """Whether `source` is the demo mount of a `dpstream up` on this machine (not a camera put under the id)."""
    parts = urlsplit(source)
    return parts.scheme == "rtsp" and parts.hostname in ("127.0.0.1", "localhost") and parts.path == DEMO_MOUNT


def _disable_demo_camera(store: SyncStore) -> None:
    """`up --no-demo` serves no demo source: the demo camera of an earlier run would only fail, and alert."""
    try:
        cam = store.get_camera(DEMO_ID)
    except StoredCameraUnreadable:
        return
    if cam is not None and cam.enabled and _is_our_demo(cam.source):
        store.put_camera(cam.model_copy(update={"enabled": False, "version": cam.version + 1}))
        log.info("demo camera of an earlier run disabled (no demo source with --no-demo; `up` enables it again)")


def _check_port_free(host: str, port: int) -> None:
    """Refuse to start when the API's address is taken, before anything prints a token for a server that
    would not come up."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # as uvicorn binds: connections of a previous run in TIME_WAIT do not hold the port, a listener does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"the API cannot listen on {host}:{port} ({exc.strerror}); stop what holds it or "
                              "choose another --port (or DPSTREAM_PORT)") from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_up(settings: Settings, *, demo: bool = True) -> int:
    """SIGTERM (docker stop, systemd) stops it as Ctrl-C does: the worker hands its leases back and saves its
    ledgers, then the RTSP server and the store stop. (uvicorn re-raises the signal that stopped it once it has
    shut down; under the default SIGTERM handler that killed the process before any of that.)"""
    _check_port_free(settings.host, settings.port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_up(settings, demo=demo)
    except KeyboardInterrupt:  # before the API started: what has started was stopped on the way out
        typer.echo("stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_up(settings: Settings, *, demo: bool) -> int:
    with contextlib.ExitStack() as stack:
        redis_line = redact_url(settings.redis_url or "")
        if not settings.redis_url:
            valkey = stack.enter_context(EmbeddedValkey(settings.data_dir, port=settings.embedded_redis_port))
            settings = settings.model_copy(update={"redis_url": valkey.url})
            redis_line = (f"embedded Valkey {redact_url(valkey.url)} (append-only, data in {valkey.data_dir}, "
                          "this account only)")
        store = SyncStore(settings.redis_url, prefix=settings.key_prefix)
        stack.callback(store.close)
        store.ping()
        # on the API's address (so that `up --host 0.0.0.0` in a container serves it outside, as a worker's
        # --rtsp-port does); with DPSTREAM_RTSP_USER/PASSWORD the demo camera is read with them too
        rtsp = start_rtsp_server(settings, settings.rtsp_port, any_port_if_taken=True)
        stack.callback(rtsp.stop)
        if demo:
            rtsp.serve_test_pattern(DEMO_MOUNT, pattern="ball", width=320, height=240, fps=15)
            user, password = settings.rtsp_auth or (None, None)
            _ensure_demo_camera(store, rtsp.url(DEMO_MOUNT, user=user, password=password))
        else:
            _disable_demo_camera(store)
        if settings.admin_token is not None:
            token_line = "admin token: the value of DPSTREAM_ADMIN_TOKEN"
            token = "$DPSTREAM_ADMIN_TOKEN"
        else:
            token = replace_tokens_named(store, "admin", "dpstream up")
            token_line = f"admin token (shown once, stored hashed; the previous run's no longer works): {token}"
        worker = WorkerProcess(settings, rtsp_server=rtsp)
        worker.start()
        stack.callback(worker.stop)

        api = f"http://{settings.host}:{settings.port}"
        typer.echo(
            f"\ndpstream is up\n"
            f"  API            {api}   (OpenAPI docs: {api}/docs, metrics: {api}/metrics)\n"
            f"  Redis          {redis_line}\n"
            f"  {token_line}\n"
            f"  try            curl -H 'Authorization: Bearer {token}' {api}/api/v1/cameras\n"
            + (f"  demo camera    {api}/api/v1/cameras/{DEMO_ID}/stream.mjpeg (needs the bearer token)\n"
               f"  private RTSP   {rtsp.public_url('/' + DEMO_ID + '/private')}"
               f"{'  (DPSTREAM_RTSP_USER and its password)' if settings.rtsp_auth else ''}\n" if demo else "")
            + "  tokens         dpstream token create --scope read | token list | token revoke ID\n"
            "Ctrl-C stops.\n"
        )
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                               **UVICORN_LOGGING))
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises Ctrl-C (and SIGTERM) after shutting down
            server.run()
        typer.echo("stopping: worker, RTSP server, store...")
    return 0
