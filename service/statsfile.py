"""Files of releases (`dpstream pixelize --stats FILE`): the compact noisy statistics of a clip.

Layout: b"DPSS" | u8 version (1) | then per release: u32 length (little-endian) + `Release.to_bytes()`.
Each release carries its own header and checksum; the file holds nothing else (no frames, no keys).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from dp import Release, ReleaseFormatError

MAGIC = b"DPSS"
VERSION = 1


class StatsWriter:
    """Appends releases to a stats file; a context manager that closes the file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._fh: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed by close()/__exit__
        self._fh.write(MAGIC + bytes([VERSION]))
        self.count = 0

    def write(self, release: Release) -> None:
        data = release.to_bytes()
        self._fh.write(struct.pack("<I", len(data)) + data)
        self.count += 1

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> StatsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_releases(path: str | os.PathLike) -> Iterator[Release]:
    """Every release of a stats file (or a single raw release file), checked; ReleaseFormatError if not."""
    with open(path, "rb") as fh:
        head = fh.read(5)
        if head[:4] == b"DPSR":  # a single release written with Release.to_bytes()
            yield Release.from_bytes(head + fh.read())
            return
        if head[:4] != MAGIC:
            raise ReleaseFormatError(f"{os.fspath(path)!r} is not a dpstream stats file (no DPSS magic)")
        if len(head) < 5:
            raise ReleaseFormatError(f"{os.fspath(path)!r}: stats file truncated in its header ({len(head)} bytes)")
        if head[4] != VERSION:
            raise ReleaseFormatError(f"{os.fspath(path)!r}: stats file version {head[4]} is not supported")
        index = 0
        while True:
            size = fh.read(4)
            if not size:
                return
            if len(size) < 4:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: truncated after {index} releases")
            (n,) = struct.unpack("<I", size)
            data = fh.read(n)
            if len(data) < n:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: release {index} is truncated")
            try:
                release = Release.from_bytes(data)
            except ReleaseFormatError as exc:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: release {index}: {exc}") from None
            yield release
            index += 1
