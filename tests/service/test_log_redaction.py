"""The log handler is the last edge: whatever a record carries (its message, the traceback of log.exception,
uvicorn's "Exception in ASGI application"), a camera URL's password never reaches the log.

Each case runs in a fresh process (setup_logging replaces the root handlers) and reads its real stderr. The
uvicorn case serves a real app on loopback with a route that fails quoting a camera URL; its control runs the
same server with uvicorn's own logging config, so a harness that could not see the password fails too."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.service.conftest import free_port

PASSWORD = "hunter2-Zq9"
URL = f"rtsp://admin:{PASSWORD}@10.0.0.7:554/stream1"

_LOG_SCRIPT = textwrap.dedent(
    """
    import logging, sys
    from service.logsetup import setup_logging

    setup_logging("INFO")
    log = logging.getLogger("dpstream.test")
    log.warning("camera source %s refused", sys.argv[1])
    try:
        raise ConnectionError("could not open " + sys.argv[1])
    except ConnectionError:
        log.exception("ingest failed")
    """
)

_UVICORN_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time, urllib.error, urllib.request
    import uvicorn
    from fastapi import FastAPI
    from service.logsetup import UVICORN_LOGGING, setup_logging

    url, port, ours = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "ours"
    setup_logging("INFO")
    app = FastAPI()

    @app.get("/boom")
    def boom():
        raise RuntimeError("a library quoted " + url)

    # the control differs only in uvicorn's own logging config, the one the service ran with before
    kwargs = UVICORN_LOGGING if ours else dict(UVICORN_LOGGING, log_config=uvicorn.config.LOGGING_CONFIG)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **kwargs))
    thread = threading.Thread(target=server.run)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            sys.exit("server did not start")
        time.sleep(0.02)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/boom", timeout=10)
    except urllib.error.HTTPError as err:
        print("status", err.code)
    server.should_exit = True
    thread.join(30)
    """
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)


def test_a_record_and_its_traceback_lose_the_password():
    proc = _run(_LOG_SCRIPT, URL)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "camera source rtsp://" in proc.stderr and "10.0.0.7:554/stream1 refused" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "ConnectionError: could not open" in proc.stderr
    assert PASSWORD not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("ours", [True, False], ids=["service-config", "control-uvicorn-default"])
def test_an_unhandled_api_error_loses_the_password(ours):
    proc = _run(_UVICORN_SCRIPT, URL, str(free_port()), "ours" if ours else "uvicorn")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "status 500" in proc.stdout
    assert "RuntimeError: a library quoted rtsp://" in proc.stderr  # the bug is logged, with its traceback
    assert (PASSWORD in proc.stderr) is (not ours), proc.stderr[-2000:]
