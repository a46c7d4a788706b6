"""Compile every CPU kernel a dpstream process can call, ahead of time, into Numba's on-disk cache.

    from dp.precompile import precompile
    report = precompile(progress=lambda done, total, label: ...)   # `dpstream precompile`
    report.compiled, report.loaded                                   # signatures compiled / loaded

A camera's worker compiles dp's kernels before its first frame (streams.worker's warm-up: the camera's spec
released twice on a black read-only frame). On a cold cache that is tens of seconds of LLVM work that cannot
be interrupted. This module runs the same warm-up for every kind of camera a worker can be given, so the
container image ships the cache and a worker only loads it:

* every layout mode (fixed, map, previous, private), with the default macro-block and with one of 256 px
  (the private score's counters widen past 128 px), and fixed cells above 257 px (wider row counters), odd
  ones included (an I420 frame is converted first: cells must not split its pixel pairs);
* every frame a worker's ingest delivers: I420 for an RGB spec (summed as it is converted) and for
  color="yuv420", RGB for odd-sized streams (converted by dp.color.i420_to_rgb), grey;
* the sinks' and the API's reconstructions (I420 for the re-stream, RGB for JPEG, a stored release read back).

Numba keys a signature by its argument types (dtype, dimensions, read-only or not), never by frame sizes, so
one small frame per kind covers all. Nothing is released to anyone: these are black scratch frames, with
fresh Pixelizers, as in the worker's own warm-up. Only the CPU backend is compiled here (the CUDA kernels
compile on the device that runs them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dp.errors import ConfigError
from dp.pixelizer import Pixelizer
from dp.release import Release
from dp.spec import PixelizeSpec

# What a worker's ingest hands Pixelizer.release (streams.frame.pixel_format_for, streams.ingest):
#   "i420-rgb"  an RGB spec's even-sized stream: the decoder's I420 frame, released with i420=colorimetry
#   "rgb"       an RGB spec's odd-sized stream: HxWx3, converted from I420 by dp.color.i420_to_rgb
#   "gray"      a grey spec: HxWx1
#   "yuv420"    a color="yuv420" spec: the decoder's I420 frame as it is
FRAME_KINDS: tuple[str, ...] = ("i420-rgb", "rgb", "gray", "yuv420")

# The spec settings whose kernels differ in their argument types (row and column counter widths, a
# converted frame), beside the layout modes themselves.
_SPEC_VARIANTS: tuple[tuple[str, dict], ...] = (
    ("fixed 16 px", {"layout": "fixed", "cell_size": 16}),
    ("fixed 15 px", {"layout": "fixed", "cell_size": 15}),  # odd: an I420 frame is converted first
    ("fixed 264 px", {"layout": "fixed", "cell_size": 264}),  # int32 row counters (255 * b > 2^16)
    ("fixed 265 px", {"layout": "fixed", "cell_size": 265}),  # both
    ("map", {"layout": "map", "layout_map": ((4, 8), (16, 32))}),  # 2x2 blocks: the scratch frame's grid
    ("previous", {"layout": "previous"}),
    ("private", {"layout": "private", "eps_layout": 0.1}),
    ("private, 256 px blocks", {"layout": "private", "eps_layout": 0.1, "block_size": 256}),  # uint32 columns
)


@dataclass(frozen=True)
class WarmUp:
    """One kind of camera: a spec and the kind of frame its worker releases."""

    label: str
    spec: PixelizeSpec
    frame_kind: str


@dataclass(frozen=True)
class PrecompileReport:
    """What `precompile` did: kernel signatures compiled and loaded from the cache, and how long it took."""

    warm_ups: int
    compiled: int
    loaded: int
    seconds: float


def warm_ups() -> list[WarmUp]:
    """Every kind of camera whose kernels `precompile` compiles (specs a worker cannot be given are left out:
    yuv420 with odd cells)."""
    out = []
    for kind in FRAME_KINDS:
        for label, settings in _SPEC_VARIANTS:
            channels = 1 if kind == "gray" else 3
            color = "yuv420" if kind == "yuv420" else "rgb"
            try:
                spec = PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=channels, color=color, **settings)
            except ConfigError:
                continue
            out.append(WarmUp(f"{kind}, {label}", spec, kind))
    return out


def _scratch_side(spec: PixelizeSpec) -> int:
    # the worker's warm-up frame: 2x2 macro-blocks (at least 32 px a side)
    return 2 * max(spec.block_size, 16)


def scratch_frame(spec: PixelizeSpec, frame_kind: str) -> np.ndarray:
    """A black frame of this kind, read-only like a decoded one (a writable frame compiles other kernels)."""
    side = _scratch_side(spec)
    if frame_kind in ("i420-rgb", "yuv420"):
        frame = np.zeros((side * 3 // 2, side), dtype=np.uint8)
    else:
        frame = np.zeros((side, side, spec.channels), dtype=np.uint8)
    frame.flags.writeable = False
    return frame


def warm_up(spec: PixelizeSpec, frame_kind: str, *, backend: str = "cpu") -> Release:
    """The worker's warm-up for one kind of camera, then its sinks' reconstructions; returns the last release.

    Two releases (the second takes an adaptive layout's path from the first) by a fresh Pixelizer on a black
    frame: no budget, no camera state, nothing delivered.
    """
    if frame_kind not in FRAME_KINDS:
        raise ConfigError(f"frame_kind={frame_kind!r} is unknown; use one of {', '.join(FRAME_KINDS)}")
    frame = scratch_frame(spec, frame_kind)
    i420 = "bt709" if frame_kind == "i420-rgb" else None
    pixelizer = Pixelizer(spec, backend=backend)
    rel = None
    for _ in range(2):
        rel = pixelizer.release(frame, i420=i420)
    if rel.channels == 3:
        rel.reconstruct_i420()  # the re-stream's encoder input
    rel.reconstruct()  # the re-stream of grey cameras, the API's JPEG
    Release.from_bytes(rel.to_bytes()).reconstruct()  # the API reads releases back from the store
    return rel


def _ingest_conversion() -> None:
    """streams.ingest converts an odd-sized I420 stream for an RGB spec on a writable, padded buffer."""
    from dp.color import i420_to_rgb

    i420_to_rgb(np.zeros((48, 32), dtype=np.uint8), "bt601")


def cache_location() -> str | None:
    """The directory Numba keeps dp's kernels in for this process; None when it can write nowhere (they are
    then compiled in memory, at every start)."""
    from dp import kernels_cpu

    if not kernels_cpu._CACHE:
        return None
    return str(getattr(getattr(kernels_cpu.release_means, "_cache", None), "_cache_path", "(unknown)"))


def kernel_cache_stats() -> tuple[int, int]:
    """(signatures compiled, signatures loaded from the cache) by dp's CPU kernels in this process so far."""
    from dp import kernels_cpu

    seen: dict[int, object] = {}
    for space in (vars(kernels_cpu), vars(kernels_cpu._m)):
        for obj in space.values():
            if hasattr(obj, "stats") and hasattr(obj, "py_func"):  # a Numba dispatcher
                seen[id(obj)] = obj
    compiled = sum(sum(d.stats.cache_misses.values()) for d in seen.values())
    loaded = sum(sum(d.stats.cache_hits.values()) for d in seen.values())
    return compiled, loaded


def precompile(progress: Callable[[int, int, str], None] | None = None) -> PrecompileReport:
    """Compile (or load) every CPU kernel signature a worker, the API or the pixelize command can call.

    `progress(done, total, label)` is called before each kind of camera and once at the end (done == total).
    Where the cache goes is Numba's choice: NUMBA_CACHE_DIR when it is set and writable (see
    docs/deploy.md); a cache compiled on another CPU model is ignored and compiled again where it runs.
    """
    started = time.perf_counter()
    compiled0, loaded0 = kernel_cache_stats()
    steps: list[tuple[str, Callable[[], object]]] = [
        (w.label, (lambda w=w: warm_up(w.spec, w.frame_kind))) for w in warm_ups()
    ]
    steps.append(("odd-sized I420 stream to RGB", _ingest_conversion))
    for done, (label, step) in enumerate(steps):
        if progress is not None:
            progress(done, len(steps), label)
        step()
    if progress is not None:
        progress(len(steps), len(steps), "done")
    compiled, loaded = kernel_cache_stats()
    return PrecompileReport(warm_ups=len(steps), compiled=compiled - compiled0, loaded=loaded - loaded0,
                            seconds=time.perf_counter() - started)
