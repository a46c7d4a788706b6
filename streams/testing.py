"""Helpers for tests and demos that need real servers on loopback: free ports, polling, a server process.

Used by ``tests/streams`` and available to other areas' tests (for example ``service/``'s)::

    from streams.testing import ServerProcess, free_port, wait_for
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["ServerProcess", "dpstream_threads", "free_port", "wait_for"]


def wait_for(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passed; return its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dpstream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("dpstream-")]


class ServerProcess:
    """``python -m streams.rtsp_server`` in a child process, so a test can SIGKILL it like a crashed camera."""

    def __init__(self, port: int, *args: str, cwd: str | None = None) -> None:
        self.port = port
        self.cwd = cwd
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> str:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.rtsp_server", "--port", str(self.port), *self.args],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result or not result[0].startswith("READY "):
            self.kill()
            raise RuntimeError(f"RTSP server process did not start on port {self.port}")
        return result[0].split(" ", 1)[1].strip()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
