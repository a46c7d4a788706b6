"""`Pixelizer`: one camera's releases, frame by frame (privacy.md §2-§4).

    px = Pixelizer(PixelizeSpec(eps_pix=1.0, m_pixels=16), backend="auto")
    rel = px.release(frame)            # eps_frame-DP for frames differing in m_pixels positions

Each call draws a fresh 256-bit ChaCha20 key from the OS; an explicit `key=` makes the output
deterministic and exists for tests only. In `previous` mode the pixelizer remembers its last release (a
private output), whose layout statistics choose the next frame's layout.
"""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np

from dp import layout as lay
from dp.cell_math import DOMAIN_LAYOUT
from dp.errors import BackendUnavailable, ConfigError, FrameError
from dp.noise import fresh_key, key_words, laplace_tables
from dp.release import MAX_SIDE, Release  # one side limit for releasing and parsing
from dp.spec import PixelizeSpec

BACKENDS = ("auto", "cpu", "cuda")


class CpuBackend:
    """Numba kernels on the CPU (dp.kernels_cpu)."""

    name = "cpu"

    @staticmethod
    def to_device(frame: np.ndarray) -> np.ndarray:
        return frame

    @staticmethod
    def release_means(frame, codes, sizes, block, offsets, n_means, key, tables) -> np.ndarray:
        from dp.kernels_cpu import release_means

        out = np.empty(n_means, dtype=np.uint8)
        release_means(frame, codes, sizes, block, offsets, key, tables.zero_threshold, tables.digits, tables.guide,
                      tables.n_digits, _row_proto(sizes), out)
        return out

    @staticmethod
    def release_means_i420(frame, height, width, codes, sizes, block, offsets, n_means, key, tables) -> np.ndarray:
        from dp.kernels_cpu import release_means_i420

        out = np.empty(n_means, dtype=np.uint8)
        release_means_i420(frame, height, width, codes, sizes, block, offsets, key, tables.zero_threshold,
                           tables.digits, tables.guide, tables.n_digits, _row_proto(sizes), out)
        return out

    @staticmethod
    def release_means_rgb_from_i420(frame, height, width, conv, codes, sizes, block, offsets, n_means, key,
                                    tables) -> np.ndarray:
        """release_means of i420_to_rgb(frame) under conv, without making that picture (even cell sizes)."""
        from dp.kernels_cpu import release_means_rgb_from_i420

        out = np.empty(n_means, dtype=np.uint8)
        release_means_rgb_from_i420(frame, height, width, conv, codes, sizes, block, offsets, key,
                                    tables.zero_threshold, tables.digits, tables.guide, tables.n_digits,
                                    _row_proto(sizes, 510), out)
        return out

    @staticmethod
    def noisy_complexity(frame, block, clip, n_blocks, grid_shape, key, tables) -> np.ndarray:
        from dp.kernels_cpu import complexity_column_proto, noisy_complexity

        out = np.empty(n_blocks, dtype=np.int64)
        noisy_complexity(frame, block, clip, _noise(n_blocks, key, DOMAIN_LAYOUT, tables),
                         complexity_column_proto(block), out)
        return out


_ROW_PROTOS = (np.zeros(0, dtype=np.uint16), np.zeros(0, dtype=np.int32))


def _row_proto(sizes: np.ndarray, top: int = 255) -> np.ndarray:
    """The dtype of the kernels' row counters (b rows of 0..top: samples, or 510 for the pixel pairs of
    release_means_rgb_from_i420): uint16 while top * b fits (twice the SIMD lanes of int32), else int32."""
    return _ROW_PROTOS[0 if top * int(sizes.max()) <= 0xFFFF else 1]


def _noise(n: int, key: np.ndarray, domain: int, tables) -> np.ndarray:
    """Samples 0..n-1 of the noise stream (key, domain) on the CPU."""
    from dp.kernels_cpu import fill_noise

    noise = np.empty(n, dtype=np.int64)
    fill_noise(key, domain, tables.zero_threshold, tables.digits, tables.guide, tables.n_digits, noise)
    return noise


# Where an NVIDIA driver shows itself (Linux, containers given a GPU, WSL2). Without one, `auto` needs no
# CUDA probe: importing numba.cuda alone takes about 0.2 s, a fifth of a short command's start-up.
_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")


def cuda_usable() -> bool:
    """True when a real CUDA device is present (the simulator does not count for `auto`)."""
    if not any(os.path.exists(path) for path in _DRIVER_PATHS):
        return False
    try:
        from numba import config

        if config.ENABLE_CUDASIM:
            return False
        from dp.kernels_cuda import is_available
    except ImportError:
        return False
    return is_available()


def make_backend(backend: str):
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "cuda" if cuda_usable() else "cpu"
    if backend == "cpu":
        return CpuBackend()
    try:
        from dp.kernels_cuda import CudaBackend, is_available
    except ImportError as exc:
        raise BackendUnavailable(f"backend='cuda' needs numba-cuda ({exc}); install dpstream[cuda] or use 'cpu'") from None
    if not is_available():
        raise BackendUnavailable("backend='cuda' but no CUDA device is available; use backend='cpu' or 'auto'")
    return CudaBackend()


class Pixelizer:
    """Releases frames of one camera under a `PixelizeSpec`; thread-safe."""

    def __init__(self, spec: PixelizeSpec, backend: str = "auto") -> None:
        if not isinstance(spec, PixelizeSpec):
            raise ConfigError(f"spec must be a PixelizeSpec, got {type(spec).__name__}")
        self._backend = make_backend(backend)
        self._lock = threading.Lock()
        self._spec = spec
        self._check_backend_limits(spec)
        self._previous: Release | None = None
        self._next_index = 0

    def __repr__(self) -> str:
        return f"Pixelizer({self._spec!r}, backend={self._backend.name!r})"

    @property
    def spec(self) -> PixelizeSpec:
        return self._spec

    @property
    def backend(self) -> str:
        """The backend in use: 'cpu' or 'cuda'."""
        return self._backend.name

    def update_spec(self, spec: PixelizeSpec) -> None:
        """Apply a new configuration from the next release on (live config)."""
        self.check_spec(spec)
        with self._lock:
            self._spec = spec

    def check_spec(self, spec: PixelizeSpec) -> None:
        """Raise :class:`ConfigError` if this Pixelizer's backend cannot release under ``spec``.

        What `update_spec` checks, without applying anything: for a caller that queues the change for later
        (a camera worker applies it at the next frame) and must refuse it now.
        """
        if not isinstance(spec, PixelizeSpec):
            raise ConfigError(f"spec must be a PixelizeSpec, got {type(spec).__name__}")
        self._check_backend_limits(spec)

    def _check_backend_limits(self, spec: PixelizeSpec) -> None:
        if self._backend.name == "cuda":
            from dp.kernels_cuda import MAX_SHARED_SUMS

            worst = (spec.block_size // min(spec.cell_sizes)) ** 2 * spec.channels
            if worst > MAX_SHARED_SUMS:
                raise ConfigError(
                    f"block_size={spec.block_size} with cell size {min(spec.cell_sizes)} gives {worst} sums "
                    f"per macro-block; the CUDA kernel holds at most {MAX_SHARED_SUMS}: use larger cells"
                )

    # --- the release -----------------------------------------------------------------------------
    def release(
        self,
        frame,
        key: bytes | None = None,
        *,
        camera_id: str = "",
        frame_index: int | None = None,
        timestamp_s: float | None = None,
        i420: str | None = None,
    ) -> Release:
        """Release one frame (HxWxC uint8, C == spec.channels; HxW allowed for grey; a (3H/2)xW I420 array for
        color='yuv420'). Never mutates it.

        `i420="bt709"` (any `dp.color.yuv_to_rgb_coefficients` colorimetry) gives an RGB spec a decoder's
        (3H/2)xW I420 frame instead of its RGB picture: the release is that of `dp.color.i420_to_rgb(frame,
        i420)` (half the bytes out of the decoder, and no colour conversion in the decoding pipeline). The
        CPU backend sums that picture as it converts, without storing it, for even cell sizes and every layout
        but `private`, whose detail score reads the picture itself.

        `key` (32 bytes) makes the noise deterministic: tests only. Production never passes it.
        """
        camera_id, frame_index, timestamp_s = _checked_header(camera_id, frame_index, timestamp_s)
        with self._lock:
            spec = self._spec
            conv = None  # the colour rule of an I420 frame whose RGB picture is summed as it is converted
            if i420 is not None:
                if spec.color != "rgb" or spec.channels != 3:
                    raise ConfigError(f"i420= gives an RGB spec an I420 frame; this spec has color={spec.color!r}, "
                                      f"channels={spec.channels} (color='yuv420' takes I420 frames as they are)")
                from dp.color import i420_to_rgb, yuv_to_rgb_coefficients

                # the fused kernel sums pixel pairs, so cells must not split one; the private layout's
                # detail score reads the picture itself
                if spec.layout == "private" or self._backend.name != "cpu" or any(s % 2 for s in spec.cell_sizes):
                    frame = i420_to_rgb(frame, i420)
                else:
                    conv = yuv_to_rgb_coefficients(i420)
            frame = self._checked(frame, spec, i420=conv is not None)
            height, width = int(frame.shape[0]), int(frame.shape[1])
            if spec.color == "yuv420" or conv is not None:
                height = height * 2 // 3
            if frame_index is None:
                frame_index = self._next_index
                if frame_index >= 1 << 64:
                    raise ConfigError("the next frame_index would pass 2^64 - 1 (the release format's limit); "
                                      "pass frame_index explicitly")
            self._next_index = int(frame_index) + 1
            words = fresh_key() if key is None else key_words(key)
            grid = lay.Grid(height, width, spec.block_size)
            sizes = np.asarray(spec.cell_sizes, dtype=np.int64)
            device_frame = self._backend.to_device(frame)
            codes = self._codes(device_frame, grid, spec, words)
            offsets, n_means = grid.cell_offsets(codes, sizes, spec.channels)
            if n_means >= 1 << 32:
                raise FrameError(f"a {height}x{width} frame at these cell sizes has {n_means} means; use larger cells")
            if conv is not None:
                means = self._backend.release_means_rgb_from_i420(device_frame, height, width, conv, codes, sizes,
                                                                  spec.block_size, offsets, n_means, words,
                                                                  laplace_tables(spec.noise_scale))
            elif spec.color == "yuv420":
                means = self._backend.release_means_i420(device_frame, height, width, codes, sizes, spec.block_size,
                                                         offsets, n_means, words, laplace_tables(spec.noise_scale))
            else:
                means = self._backend.release_means(device_frame, codes, sizes, spec.block_size, offsets, n_means,
                                                    words, laplace_tables(spec.noise_scale))
            rel = Release(
                camera_id=str(camera_id),
                frame_index=int(frame_index),
                timestamp_s=float(time.time() if timestamp_s is None else timestamp_s),
                height=height,
                width=width,
                channels=spec.channels,
                layout_mode=spec.layout,
                block_size=spec.block_size,
                cell_sizes=spec.cell_sizes,
                m_pixels=spec.m_pixels,
                eps_layout=spec.eps_layout,
                eps_pix=spec.eps_pix,
                layout=codes,
                means=means,
                _offsets=offsets,
                color=spec.color,
            )
            if spec.layout == "previous":
                self._previous = rel
            return rel

    def _codes(self, frame, grid: lay.Grid, spec: PixelizeSpec, words: np.ndarray) -> np.ndarray:
        if spec.layout == "fixed":
            return np.zeros(grid.shape, dtype=np.uint8)
        if spec.layout == "map":
            return lay.map_codes(grid, spec)
        if spec.layout == "previous":
            prev = self._previous
            if prev is None or (prev.height, prev.width, prev.channels, prev.color, prev.block_size,
                                prev.cell_sizes) != (grid.height, grid.width, spec.channels, spec.color,
                                                     spec.block_size, spec.cell_sizes):
                return lay.uniform_codes(grid, spec)
            return self._previous_codes(prev, spec, grid)
        # private: noisy complexity of this frame, paid for with eps_layout
        n_by, n_bx = grid.shape
        if spec.color == "yuv420":  # the score reads luma: the first H rows of the I420 frame
            frame = frame[: grid.height].reshape(grid.height, grid.width, 1)
        noisy = self._backend.noisy_complexity(frame, spec.block_size, spec.gradient_clip, n_by * n_bx,
                                               grid.shape, words, laplace_tables(spec.layout_noise_scale))
        return lay.choose_codes(lay.g2_from_noisy_complexity(noisy, grid, spec), spec)

    @staticmethod
    def _previous_codes(prev: Release, spec: PixelizeSpec, grid: lay.Grid) -> np.ndarray:
        """choose_codes(g2_from_release_stats(release_block_stats(prev))), in one kernel call."""
        from dp.kernels_cpu import previous_rule_codes

        # the noise of the previous release follows its own settings (they may have changed since)
        t = 255.0 * prev.m_pixels * prev.channels / prev.eps_pix
        size_terms, noise_terms = lay.rule_terms(spec.cell_sizes, spec.noise_scale, spec.color)
        out = np.empty(grid.shape, dtype=np.uint8)
        previous_rule_codes(prev.means, prev.layout, np.asarray(prev.cell_sizes, dtype=np.int64), prev.block_size,
                            prev._offsets, prev.height, prev.width, prev.channels, prev.color == "yuv420",
                            2.0 * t * t, float(spec.detail_gain), size_terms, noise_terms, out)
        return out

    def _checked(self, frame, spec: PixelizeSpec, i420: bool = False):
        if not isinstance(frame, np.ndarray):
            if self._backend.name == "cuda" and _is_device_array(frame):
                if frame.dtype != np.uint8 or len(frame.shape) != 3 or frame.shape[2] != spec.channels:
                    raise FrameError("device frames must be HxWxC uint8 with C == spec.channels")
                return frame
            raise FrameError(f"frame must be a numpy array (HxWxC uint8), got {type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise FrameError(f"frame dtype is {frame.dtype}; convert to uint8 (0..255) first")
        if spec.color == "yuv420" or i420:
            from dp.color import checked_i420

            frame = checked_i420(frame)
            if frame.shape[0] * 2 // 3 > MAX_SIDE or frame.shape[1] > MAX_SIDE:
                raise FrameError(f"frame has shape {frame.shape}; sides above {MAX_SIDE} pixels are not supported")
            return frame
        if frame.ndim == 2 and spec.channels == 1:
            frame = frame[:, :, None]
        if frame.ndim != 3:
            raise FrameError(f"frame has shape {frame.shape}; expected H x W x {spec.channels}")
        if frame.shape[2] != spec.channels:
            raise FrameError(
                f"frame has {frame.shape[2]} channels but the spec releases {spec.channels}; "
                f"convert the frame or set channels={frame.shape[2]}"
            )
        if frame.shape[0] < 1 or frame.shape[1] < 1:
            raise FrameError(f"frame has shape {frame.shape}; it must be at least 1x1")
        if frame.shape[0] > MAX_SIDE or frame.shape[1] > MAX_SIDE:
            raise FrameError(f"frame has shape {frame.shape}; sides above {MAX_SIDE} pixels are not supported")
        return np.ascontiguousarray(frame)


def _checked_header(camera_id, frame_index, timestamp_s):
    """The release's own header fields, refused before any noise is drawn if its bytes could not hold them."""
    if not isinstance(camera_id, str):
        raise ConfigError(f"camera_id={camera_id!r} must be a string")
    try:
        if len(camera_id.encode("utf-8")) > 0xFFFF:
            raise ConfigError(f"camera_id is {len(camera_id.encode('utf-8'))} bytes long; at most 65535")
    except UnicodeEncodeError:
        raise ConfigError(f"camera_id={camera_id!r} is not valid Unicode text") from None
    if frame_index is not None and (isinstance(frame_index, bool) or not isinstance(frame_index, int | np.integer)
                                    or not 0 <= int(frame_index) < 1 << 64):
        raise ConfigError(f"frame_index={frame_index!r} must be an integer from 0 to 2^64 - 1")
    number = isinstance(timestamp_s, int | float | np.integer | np.floating) and not isinstance(timestamp_s, bool)
    if timestamp_s is not None and not (number and math.isfinite(timestamp_s)):
        raise ConfigError(f"timestamp_s={timestamp_s!r} must be a finite number of seconds")
    return camera_id, frame_index, timestamp_s


def _is_device_array(obj) -> bool:
    """A GPU-resident array (CUDA array interface, or numba's device arrays, the simulator's included)."""
    return hasattr(obj, "__cuda_array_interface__") or hasattr(obj, "copy_to_host")
