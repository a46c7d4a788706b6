"""`Release`: the compact noisy statistics of one frame, and its byte format (privacy.md §5).

Layout of `to_bytes()` (little-endian), version 1::

    b"DPSR" | u8 version | u16 len + camera id (UTF-8) | u64 frame index | f64 capture timestamp (s)
    | u32 H | u32 W | u8 C | u8 layout mode | u16 S | u8 n + n x u16 candidate sizes | u32 m
    | f64 eps_layout | f64 eps_pix | u32 n codes | u8 encoding (0: one u8 code per macro-block,
    row-major; 1: uniform, a single code for all) + codes
    | u32 n means + means (u8) | u32 CRC-32 of everything before it

Version 2 (colour releases other than RGB) adds u8 colour (1: yuv420) right after eps_pix; RGB and grey
releases are written as version 1, byte for byte as before.

Everything in it is public or noisy: a release holds no raw pixel, sum, score or key.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from dp.errors import ConfigError, ReleaseFormatError
from dp.layout import Grid
from dp.spec import COLORS, LAYOUT_MODES, exact_epsilon

MAX_SIDE = 32768  # the largest frame side Pixelizer releases (dp.pixelizer.MAX_SIDE)
MAGIC = b"DPSR"
FORMAT_VERSION = 2  # version 1: the same without the colour byte (RGB or grey)
_FIXED = struct.Struct("<QdIIBBH")
_EPS = struct.Struct("<Idd")
_RAW, _UNIFORM = 0, 1


@lru_cache(maxsize=256)  # a camera's releases share their settings: checked once, not on every parse
def _check_settings(mode, color, channels, block, sizes, m_pixels, eps_pix, eps_layout, height, width) -> None:
    """A parsed header's settings are ones a PixelizeSpec accepts (and its cells fit its block): else the
    bytes were not written by Pixelizer, whatever their checksum says."""
    from dp.spec import PixelizeSpec

    if mode == "fixed":
        if len(sizes) != 1 or block != sizes[0]:
            raise ReleaseFormatError(f"a fixed-layout release has one cell size equal to its block, not {sizes} / {block}")
    elif tuple(sorted(set(sizes))) != tuple(sizes):
        raise ReleaseFormatError(f"release cell sizes {sizes} are not distinct and increasing")
    if color == "yuv420" and (height % 2 or width % 2):
        raise ReleaseFormatError(f"a yuv420 release of {height}x{width} pixels: its sides must be even")
    try:
        PixelizeSpec(eps_pix=eps_pix, m_pixels=m_pixels, channels=channels, color=color, layout=mode,
                     cell_size=sizes[0], cell_sizes=tuple(sizes), block_size=block, eps_layout=eps_layout,
                     layout_map=((sizes[0],),) if mode == "map" else None)
    except ConfigError as exc:
        raise ReleaseFormatError(f"release header holds settings no Pixelizer releases: {exc}") from None


@dataclass(frozen=True, eq=False)
class Release:
    """One frame's release: header fields, one layout code per macro-block, uint8 means.

    Built by `Pixelizer.release`; every consumer (API, re-stream, store, audit) gets this same object or
    its bytes, never a second noisy draw of the same frame.
    """

    camera_id: str
    frame_index: int
    timestamp_s: float
    height: int
    width: int
    channels: int
    layout_mode: str
    block_size: int
    cell_sizes: tuple[int, ...]
    m_pixels: int
    eps_layout: float
    eps_pix: float
    layout: np.ndarray  # (n_by, n_bx) uint8 codes into cell_sizes
    means: np.ndarray  # (n_means,) uint8
    _offsets: np.ndarray = field(repr=False, compare=False)
    color: str = "rgb"  # "yuv420": the means are (Y, U, V) per cell, BT.601 limited range

    @property
    def eps_spent(self) -> float:
        """The privacy cost of this release: eps_layout + eps_pix."""
        return float(exact_epsilon(self.eps_layout) + exact_epsilon(self.eps_pix))

    @property
    def grid(self) -> Grid:
        return Grid(self.height, self.width, self.block_size)

    @property
    def cell_size_map(self) -> np.ndarray:
        """Cell size (pixels) of each macro-block."""
        return np.asarray(self.cell_sizes, dtype=np.int64)[self.layout]

    @property
    def header(self) -> dict:
        """The header fields of privacy.md §5 (and the colour), JSON-safe."""
        return {
            "format_version": 1 if self.color == "rgb" else 2,  # as to_bytes writes it
            "camera_id": self.camera_id,
            "frame_index": self.frame_index,
            "timestamp_s": self.timestamp_s,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "layout_mode": self.layout_mode,
            "block_size": self.block_size,
            "cell_sizes": list(self.cell_sizes),
            "m_pixels": self.m_pixels,
            "eps_layout": self.eps_layout,
            "eps_pix": self.eps_pix,
            "color": self.color,
        }

    def summary(self) -> dict:
        """Header plus public counts derived from the layout: what an API lists for a release."""
        sizes, counts = np.unique(self.cell_size_map, return_counts=True)
        return {
            **self.header,
            "eps_spent": self.eps_spent,
            "n_means": int(self.means.size),
            "n_bytes": len(self.to_bytes()),
            "blocks_by_cell_size": {str(int(s)): int(c) for s, c in zip(sizes, counts, strict=True)},
        }

    @property
    def i420_size(self) -> int:
        """Bytes of the I420 buffer reconstruct_i420 writes (see dp.kernels_cpu.i420_layout)."""
        from dp.kernels_cpu import i420_layout

        he, _we, sy, sc = i420_layout(self.height, self.width)
        return sy * he + 2 * sc * (he // 2)

    def reconstruct(self) -> np.ndarray:
        """The privatized image: every cell filled with its released mean (HxWxC uint8; RGB for yuv420)."""
        from dp.kernels_cpu import reconstruct

        means = self.means
        if self.color == "yuv420":
            from dp.kernels_cpu import yuv_means_to_rgb

            means = np.empty_like(self.means)
            yuv_means_to_rgb(self.means, means)
        out = np.empty((self.height, self.width, self.channels), dtype=np.uint8)
        reconstruct(means, self.layout, np.asarray(self.cell_sizes, dtype=np.int64), self.block_size,
                    self._offsets, out)
        return out

    def reconstruct_i420(self, out: np.ndarray | None = None) -> np.ndarray:
        """The privatized image as one I420 buffer for a video encoder (colour releases).

        Planar Y, U, V in BT.601 limited range at even size (the last row and column repeated), rows
        padded to multiples of 4 bytes: the layout `dp.kernels_cpu.i420_layout` gives and GStreamer
        expects. The same picture as `reconstruct()` without a per-pixel colour conversion.

        `out`: a writable, contiguous 1-D uint8 array of `i420_size` bytes to write it into (an encoder's
        own buffer, streams.mapped.filled_buffer) instead of a new array; returned.
        """
        from dp.kernels_cpu import reconstruct_i420

        if self.channels != 3:
            raise ReleaseFormatError(f"reconstruct_i420 needs an RGB or YUV release; this one has {self.channels} channel")
        size = self.i420_size
        if out is None:
            out = np.empty(size, dtype=np.uint8)
        elif not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (size,)
                  and out.flags.c_contiguous and out.flags.writeable):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ConfigError(f"reconstruct_i420(out=): need a writable contiguous uint8 array of shape ({size},), "
                              f"got {got}")
        reconstruct_i420(self.means, self.layout, np.asarray(self.cell_sizes, dtype=np.int64), self.block_size,
                         self._offsets, self.height, self.width, self.color == "yuv420", out)
        return out

    # --- bytes -----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        cam = self.camera_id.encode("utf-8")
        mode = LAYOUT_MODES.index(self.layout_mode)
        color = COLORS.index(self.color)
        parts = [
            MAGIC,
            struct.pack("<BH", 2 if color else 1, len(cam)),  # RGB and grey releases stay version 1
            cam,
            _FIXED.pack(self.frame_index, self.timestamp_s, self.height, self.width, self.channels, mode,
                        self.block_size),
            struct.pack(f"<B{len(self.cell_sizes)}H", len(self.cell_sizes), *self.cell_sizes),
            _EPS.pack(self.m_pixels, self.eps_layout, self.eps_pix),
            struct.pack("<B", color) if color else b"",
            struct.pack("<I", self.layout.size),
            self._codes_bytes(),
            struct.pack("<I", self.means.size),
            np.ascontiguousarray(self.means, dtype=np.uint8).tobytes(),
        ]
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    def _codes_bytes(self) -> bytes:
        flat = np.ascontiguousarray(self.layout, dtype=np.uint8).ravel()
        if flat.size and (flat == flat[0]).all():
            return bytes([_UNIFORM, int(flat[0])])  # fixed layouts: one code instead of one per cell
        return bytes([_RAW]) + flat.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Release:
        """Parse and fully check a release; `ReleaseFormatError` says what is wrong."""
        if not isinstance(data, bytes | bytearray | memoryview):  # bytes(n) of an int would allocate n bytes
            raise ReleaseFormatError(f"a release is bytes, not {type(data).__name__}")
        data = bytes(data)
        if len(data) < 4 or data[:4] != MAGIC:
            raise ReleaseFormatError("not a dpstream release (missing the DPSR magic bytes)")
        if len(data) < 11:
            raise ReleaseFormatError(f"release truncated: {len(data)} bytes")
        body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
        if zlib.crc32(body) != crc:
            raise ReleaseFormatError("release checksum mismatch: the bytes are truncated or corrupted")
        try:
            return cls._parse(body)
        except ReleaseFormatError:
            raise
        except (struct.error, UnicodeDecodeError, IndexError, ValueError) as exc:
            raise ReleaseFormatError(f"malformed release: {exc}") from None

    @classmethod
    def _parse(cls, body: bytes) -> Release:
        version, cam_len = struct.unpack_from("<BH", body, 4)
        if version not in (1, FORMAT_VERSION):
            raise ReleaseFormatError(f"release format version {version} is not supported (this reads 1 and {FORMAT_VERSION})")
        pos = 7
        camera_id = body[pos:pos + cam_len].decode("utf-8")
        pos += cam_len
        frame_index, ts, height, width, channels, mode, block = _FIXED.unpack_from(body, pos)
        pos += _FIXED.size
        (n_sizes,) = struct.unpack_from("<B", body, pos)
        sizes = struct.unpack_from(f"<{n_sizes}H", body, pos + 1)
        pos += 1 + 2 * n_sizes
        m_pixels, eps_layout, eps_pix = _EPS.unpack_from(body, pos)
        pos += _EPS.size
        color = 0
        if version == 2:
            color = body[pos]
            pos += 1
            if color >= len(COLORS) or channels != 3:
                raise ReleaseFormatError("release header holds an impossible colour")
        if channels not in (1, 3) or mode >= len(LAYOUT_MODES) or not sizes or block < 1 or height < 1 or width < 1:
            raise ReleaseFormatError("release header holds impossible values")
        if height > MAX_SIDE or width > MAX_SIDE:
            raise ReleaseFormatError(f"release of {height}x{width} pixels: sides above {MAX_SIDE} are never released")
        _check_settings(LAYOUT_MODES[mode], COLORS[color], channels, block, sizes, m_pixels, eps_pix, eps_layout,
                        height, width)
        grid = Grid(height, width, block)
        (n_codes,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if n_codes != grid.shape[0] * grid.shape[1]:
            raise ReleaseFormatError(f"release has {n_codes} layout codes, its grid needs {grid.shape}")
        if n_codes > len(body):  # every block has a mean, so its means alone would take more bytes than these
            raise ReleaseFormatError(f"release of {len(body)} bytes cannot hold the means of {n_codes} blocks")
        encoding = body[pos]
        pos += 1
        if encoding == _UNIFORM:
            layout = np.full(grid.shape, body[pos], dtype=np.uint8)
            pos += 1
        elif encoding == _RAW:
            layout = np.frombuffer(body, dtype=np.uint8, count=n_codes, offset=pos).reshape(grid.shape).copy()
            pos += n_codes
            if layout.size and (layout == layout.flat[0]).all():  # one release, one byte string (_codes_bytes)
                raise ReleaseFormatError("release writes a uniform layout code by code; its encoding is one code")
        else:
            raise ReleaseFormatError(f"unknown layout encoding {encoding}")
        if layout.size and int(layout.max()) >= n_sizes:
            raise ReleaseFormatError("release layout code out of range")
        sizes_arr = np.asarray(sizes, dtype=np.int64)
        offsets, n_expected = grid.cell_offsets(layout, sizes_arr, channels)
        (n_means,) = struct.unpack_from("<I", body, pos)
        pos += 4
        if n_means != n_expected or len(body) != pos + n_means:
            raise ReleaseFormatError(f"release has {n_means} means and {len(body) - pos} bytes; its layout needs {n_expected}")
        means = np.frombuffer(body, dtype=np.uint8, count=n_means, offset=pos).copy()
        if version == 2 and color == 0:
            raise ReleaseFormatError("an RGB or grey release is written as version 1, not 2")
        if not math.isfinite(ts):
            raise ReleaseFormatError("release timestamp is not finite")
        return cls(camera_id, int(frame_index), float(ts), int(height), int(width), int(channels),
                   LAYOUT_MODES[mode], int(block), tuple(int(s) for s in sizes), int(m_pixels),
                   float(eps_layout), float(eps_pix), layout, means, offsets, COLORS[color])
