"""Files of releases (`dpstream pixelize --stats FILE`): the compact noisy statistics of a clip.

Layout: b"DPSS" | u8 version (1) | then per release: u32 length (little-endian) + `Release.to_bytes()`.
Each release carries its own header and checksum; the file holds nothing else (no frames, no keys).
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Iterator
from typing import BinaryIO

from dp import Release, ReleaseFormatError

MAGIC = b"DPSS"
VERSION = 1


class StatsWriter:
    """Appends releases to a stats file; a context manager that closes the file.

    A log, written in place and handed to the OS release by release (not renamed into place at the end like
    the video): a run that is killed keeps, under this name, every release made so far. A file already there
    is emptied only when the first release is written, so a run that fails before releasing anything leaves
    it as it was (and creates no file if there was none).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        try:  # opened now, so that a bad place fails before any work, but not truncated
            fd = os.open(self.path, flags | os.O_EXCL, 0o666)
            self._created = True
        except FileExistsError:
            fd = os.open(self.path, flags, 0o666)
            self._created = False
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)  # not /dev/null or a pipe: no truncate, no fsync
        self._fh: BinaryIO = os.fdopen(fd, "wb")
        self.count = 0

    def write(self, release: Release) -> None:
        """Append one release and hand it to the OS: a run cut off later keeps every release written so far.
        OSError (disk full, ...) carries this file's name."""
        data = release.to_bytes()
        try:
            if self.count == 0:
                if self._regular:
                    self._fh.truncate(0)  # the previous run's releases give way to this run's
                self._fh.write(MAGIC + bytes([VERSION]))
            self._fh.write(struct.pack("<I", len(data)) + data)
            self._fh.flush()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.path) from None
        self.count += 1

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.flush()
            if self.count and self._regular:
                os.fsync(self._fh.fileno())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, self.path) from None
        finally:
            self._fh.close()
            if self.count == 0 and self._created:  # nothing released: leave no empty file behind
                with contextlib.suppress(OSError):
                    os.remove(self.path)

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
        # a regular file's size bounds a length before it is read (a garbage length must not allocate
        # gigabytes); a pipe's is unknown: read it in chunks, so memory follows the bytes that really come
        st = os.fstat(fh.fileno())
        file_size = st.st_size if stat.S_ISREG(st.st_mode) else None
        offset, index = 5, 0
        while True:
            size = fh.read(4)
            if not size:
                return
            if len(size) < 4:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: truncated after {index} releases "
                                         f"(at byte {offset}: {len(size)} of a 4-byte length)")
            (n,) = struct.unpack("<I", size)
            if file_size is not None and n > file_size - offset - 4:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: release {index} is truncated (at byte {offset}: "
                                         f"length {n}, {max(file_size - offset - 4, 0)} bytes left)")
            data = _read_exactly(fh, n)
            if len(data) < n:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: release {index} is truncated (at byte {offset}: "
                                         f"length {n}, {len(data)} bytes left)")
            try:
                release = Release.from_bytes(data)
            except ReleaseFormatError as exc:
                raise ReleaseFormatError(f"{os.fspath(path)!r}: release {index} (at byte {offset}): {exc}") from None
            yield release
            offset += 4 + n
            index += 1


def _read_exactly(fh, n: int, chunk: int = 1 << 20) -> bytes:
    """Up to `n` bytes of `fh` (fewer at its end), read a chunk at a time."""
    if n <= chunk:
        return fh.read(n)
    parts, left = [], n
    while left:
        part = fh.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
