"""CUDA kernels (Numba-CUDA) around the same dp.cell_math functions as the CPU kernels.

A noise launch draws every sample of the frame's noise stream (one thread per ChaCha block); a sum kernel
then adds it to the integer cell sums: the tiled kernel (one 32x32 pixel tile per thread block) when every
tile holds one cell size, the generic kernel (one thread block per macro-block) otherwise. Imported lazily
(only when a CUDA backend is asked for), so dp works without numba-cuda or a GPU. Means land at the same
indices as on the CPU and take the same noise samples, so the two backends agree byte for byte for the
same key.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64

from dp import cell_math

_m = cell_math.compile_with(cuda.jit(device=True))
laplace_from_block = _m.laplace_from_block
samples_per_block = _m.samples_per_block
chacha20_block = _m.chacha20_block
noisy_cell_mean = _m.noisy_cell_mean
clipped_difference = _m.clipped_difference

THREADS = 256
NOISE_THREADS = 128
MAX_SHARED_SUMS = 4096  # int32 cell sums of one macro-block: (block / smallest cell)^2 * C must fit
_PIXELS = cell_math.DOMAIN_PIXELS
_LAYOUT = cell_math.DOMAIN_LAYOUT


@cuda.jit
def noise_kernel(key, domain, zero_threshold, table, n_digits, out):
    """out[i] = sample i of the noise stream (key, domain): one thread per ChaCha block, all in parallel.

    Noise does not depend on the frame, so it is drawn in its own launch with every thread busy, rather
    than by the few threads per tile that finalise cells (a ChaCha block is thousands of instructions).
    """
    blk = cuda.grid(1)
    per = samples_per_block(n_digits)
    i = blk * per
    if i >= out.shape[0]:
        return  # the last thread block overhangs the buffer
    w = chacha20_block(key, blk, domain, 0, 0)
    out[i] = laplace_from_block(w, 0, zero_threshold, table, n_digits)
    if per == 2 and i + 1 < out.shape[0]:
        out[i + 1] = laplace_from_block(w, 8, zero_threshold, table, n_digits)


@cuda.jit(device=True)
def _macro_block_sums(codes, sizes, offsets, block, height, width, channels, sums):
    """This thread block's macro-block: its origin (y0, x0), size (bh, bw), cell size b, cells per row
    ncx, n_sums = cells x channels and the index of its first mean (base), with those shared sums zeroed
    before any thread adds into them."""
    bx = cuda.blockIdx.x
    by = cuda.blockIdx.y
    y0 = by * block
    x0 = bx * block
    bh = min(block, height - y0)
    bw = min(block, width - x0)
    b = sizes[codes[by, bx]]
    ncx = (bw + b - 1) // b
    n_sums = ((bh + b - 1) // b) * ncx * channels
    for i in range(cuda.threadIdx.x, n_sums, THREADS):
        sums[i] = 0
    cuda.syncthreads()
    return y0, x0, bh, bw, b, ncx, n_sums, offsets[by * codes.shape[1] + bx]


@cuda.jit
def release_kernel(frame, codes, sizes, block, offsets, noise, out):
    tid = cuda.threadIdx.x
    channels = frame.shape[2]
    sums = cuda.shared.array(MAX_SHARED_SUMS, int32)
    y0, x0, bh, bw, b, ncx, n_sums, base = _macro_block_sums(codes, sizes, offsets, block, frame.shape[0],
                                                             frame.shape[1], channels, sums)
    for p in range(tid, bh * bw, THREADS):
        y = p // bw
        x = p - y * bw
        cell = (y // b) * ncx + x // b
        for c in range(channels):
            cuda.atomic.add(sums, cell * channels + c, int32(frame[y0 + y, x0 + x, c]))
    cuda.syncthreads()  # every pixel is in its cell sum before any mean is finalised
    for i in range(tid, n_sums, THREADS):
        cell = i // channels
        cy = cell // ncx
        cx = cell - cy * ncx
        n = min(b, bh - cy * b) * min(b, bw - cx * b)
        out[base + i] = noisy_cell_mean(sums[i], noise[base + i], n)


@cuda.jit
def release_kernel_i420(frame, height, width, codes, sizes, block, offsets, noise, out):
    """release_kernel for a color='yuv420' frame: `frame` is the flat I420 buffer (Y, then U and V at
    H/2 x W/2), H, W and every cell size even. Cell k's (Y, U, V) sums: its luma samples, and the chroma
    samples of its 2x2 blocks, as dp.kernels_cpu.release_means_i420 adds them."""
    tid = cuda.threadIdx.x
    wc = width // 2
    u_base = height * width
    v_base = u_base + (height // 2) * wc
    sums = cuda.shared.array(MAX_SHARED_SUMS, int32)
    y0, x0, bh, bw, b, ncx, n_sums, base = _macro_block_sums(codes, sizes, offsets, block, height, width, 3,
                                                             sums)
    for p in range(tid, bh * bw, THREADS):
        y = p // bw
        x = p - y * bw
        cuda.atomic.add(sums, ((y // b) * ncx + x // b) * 3, int32(frame[(y0 + y) * width + x0 + x]))
    hc = bh // 2
    wcb = bw // 2
    for p in range(tid, hc * wcb, THREADS):
        y = p // wcb
        x = p - y * wcb
        cell = ((2 * y) // b) * ncx + (2 * x) // b
        at = (y0 // 2 + y) * wc + x0 // 2 + x
        cuda.atomic.add(sums, cell * 3 + 1, int32(frame[u_base + at]))
        cuda.atomic.add(sums, cell * 3 + 2, int32(frame[v_base + at]))
    cuda.syncthreads()  # every sample is in its cell sum before any mean is finalised
    for i in range(tid, n_sums, THREADS):
        cell = i // 3
        cy = cell // ncx
        cx = cell - cy * ncx
        n = min(b, bh - cy * b) * min(b, bw - cx * b)
        if i - cell * 3 > 0:
            n = n // 4  # whole 2x2 chroma blocks: cells and frames have even sides
        out[base + i] = noisy_cell_mean(sums[i], noise[base + i], n)


TILE = 32
TILE_ROWS_PER_THREAD = 4
ROW_GROUPS = 8  # TILE // TILE_ROWS_PER_THREAD, spelled out: shared array shapes must be literals
TILED_THREADS = TILE * ROW_GROUPS
TILED_CELL_SIZES = (4, 8, 16, 32)


@cuda.jit
def release_kernel_tiled(frame, codes, sizes, block, offsets, noise, out):
    """The fast path: one 32x32 pixel tile per thread block, every cell of the tile of one size b in 4..32.

    Holds when block == 32 (a tile is a macro-block) or in fixed layouts with b in {4, 8, 16, 32} (a tile
    holds (32/b)^2 one-cell macro-blocks). Thread (lane, ty) sums 4 rows of pixel column `lane` in
    registers (4 divides b, so they share a cell), the b lanes of a cell add up in a shared-memory tree, and one
    lane per cell adds into shared memory: 3 shared atomics per cell per warp instead of one per pixel.
    """
    lane = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * TILE + lane
    height = frame.shape[0]
    width = frame.shape[1]
    channels = frame.shape[2]
    n_bx = codes.shape[1]
    ty0 = cuda.blockIdx.y * TILE
    tx0 = cuda.blockIdx.x * TILE
    b = sizes[codes[ty0 // block, tx0 // block]]
    cells_x = TILE // b
    n_sums = cells_x * cells_x * channels
    sums = cuda.shared.array(192, int32)  # (32 / 4)^2 cells x 3 channels
    part = cuda.shared.array((3, ROW_GROUPS, TILE), int32)
    for i in range(tid, n_sums, TILED_THREADS):
        sums[i] = 0
    x = tx0 + lane
    y_first = ty0 + ty * TILE_ROWS_PER_THREAD
    cell = ((ty * TILE_ROWS_PER_THREAD) // b) * cells_x + lane // b
    # all loads of a thread first (12 in flight for RGB), lanes outside the frame carry 0
    v0 = int32(0)
    v1 = int32(0)
    v2 = int32(0)
    if x < width:
        for r in range(TILE_ROWS_PER_THREAD):
            y = y_first + r
            if y < height:
                v0 += int32(frame[y, x, 0])
                if channels == 3:
                    v1 += int32(frame[y, x, 1])
                    v2 += int32(frame[y, x, 2])
    part[0, ty, lane] = v0
    part[1, ty, lane] = v1
    part[2, ty, lane] = v2
    cuda.syncthreads()  # partials and zeroed sums visible to all
    # segmented tree sum over the b lanes of each cell, all channels per step (the CUDA simulator that CI
    # runs has no warp shuffles); every thread reaches every barrier
    off = 1
    while off < b:
        if lane % (2 * off) == 0:
            for c in range(channels):
                part[c, ty, lane] += part[c, ty, lane + off]
        cuda.syncthreads()
        off *= 2
    if lane % b == 0:
        for c in range(channels):
            cuda.atomic.add(sums, cell * channels + c, part[c, ty, lane])
    cuda.syncthreads()  # every pixel is in its cell sum before any mean is finalised
    tile_means(sums, tid, TILED_THREADS, n_sums, channels, b, ty0, tx0, height, width, block, offsets, n_bx, noise,
               out)


@cuda.jit(device=True)
def tile_means(sums, tid, n_threads, n_sums, channels, b, ty0, tx0, height, width, block, offsets, n_bx, noise,
               out):
    """The noisy means of a 32x32 tile's cells of size b (tile origin ty0, tx0) from their sums in shared
    memory, each at its index in the release (cells in a macro-block raster, then blocks, channels innermost)."""
    cells_x = TILE // b
    for i in range(tid, n_sums, n_threads):
        tcell = i // channels
        c = i - tcell * channels
        py = ty0 + (tcell // cells_x) * b
        px = tx0 + (tcell % cells_x) * b
        if py < height and px < width:
            by = py // block
            bx = px // block
            ncx = (min(block, width - bx * block) + b - 1) // b
            idx = offsets[by * n_bx + bx] + (((py - by * block) // b) * ncx + (px - bx * block) // b) * channels + c
            n = min(b, height - py) * min(b, width - px)
            out[idx] = noisy_cell_mean(sums[i], noise[idx], n)


def tiled_path_applies(block: int, sizes) -> bool:
    """The tiled kernel needs tiles of one cell size: a 32 px macro-block, or fixed 4/8/16/32 px cells."""
    if not all(int(s) in TILED_CELL_SIZES for s in sizes):
        return False
    return block == TILE or (len(sizes) == 1 and int(sizes[0]) == block)


@cuda.jit
def complexity_kernel(frame, block, clip, noise, out):
    """Per macro-block: the clipped neighbour-difference sum plus its noise (threads laid out 32 x 8)."""
    bx = cuda.blockIdx.x
    by = cuda.blockIdx.y
    lane = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    height = frame.shape[0]
    width = frame.shape[1]
    channels = frame.shape[2]
    total = cuda.shared.array(1, int64)
    if lane == 0 and ty == 0:
        total[0] = 0
    cuda.syncthreads()
    y0 = by * block
    x0 = bx * block
    y1 = min(y0 + block, height)
    x1 = min(x0 + block, width)
    acc = int64(0)
    for y in range(y0 + ty, y1, ROW_GROUPS):
        for x in range(x0 + lane, x1, TILE):
            for c in range(channels):
                v = frame[y, x, c]
                if x + 1 < x1:
                    acc += clipped_difference(v, frame[y, x + 1, c], clip)
                if y + 1 < y1:
                    acc += clipped_difference(v, frame[y + 1, x, c], clip)
    cuda.atomic.add(total, 0, acc)
    cuda.syncthreads()  # all partial sums are in before the block's score is noised
    if lane == 0 and ty == 0:
        k = by * cuda.gridDim.x + bx
        out[k] = total[0] + noise[k]


class CudaBackend:
    """Launches the kernels; keeps the noise tables on the device per noise scale, and the device buffers of
    the frame, codes, offsets, sizes and means from one release to the next, grown when a frame needs more
    (numba allocates with cuMemAlloc and frees with cuMemFree, every time). One release at a time: each
    Pixelizer has its own backend and holds its lock for the whole release, and every buffer is written in
    full before a kernel reads it. The key and the noise are never kept: with a release's means they would
    give its un-noised sums, so each release allocates its own and lets them go."""

    name = "cuda"

    def __init__(self) -> None:
        self._tables: dict = {}
        self._buffers: dict = {}

    def _device_table(self, tables):
        hit = self._tables.get(tables.scale)
        if hit is None:
            hit = cuda.to_device(tables.digits)
            self._tables[tables.scale] = hit
        return hit

    def _buffer(self, name: str, n: int, dtype):
        """The first n items of this backend's device buffer `name`, reallocated only to grow."""
        dtype = np.dtype(dtype)
        buf = self._buffers.get(name)
        if buf is None or buf.size < n or buf.dtype != dtype:
            buf = cuda.device_array(max(int(n), 1), dtype=dtype)
            self._buffers[name] = buf
        return buf[: int(n)]

    def _upload(self, name: str, host):
        host = np.ascontiguousarray(host)
        dev = self._buffer(name, host.size, host.dtype)
        dev.copy_to_device(host.reshape(-1))
        return dev.reshape(host.shape)

    def to_device(self, frame):
        if hasattr(frame, "__cuda_array_interface__") or hasattr(frame, "copy_to_host"):
            return frame
        return self._upload("frame", frame)

    def noise(self, n: int, key, domain: int, tables):
        """Device buffer of n samples (counters 0..n-1) in one launch."""
        out = cuda.device_array(n, dtype=np.int64)
        blocks = -(-n // 2) if tables.n_digits <= 3 else n
        noise_kernel[-(-blocks // NOISE_THREADS), NOISE_THREADS](
            cuda.to_device(key), domain, tables.zero_threshold, self._device_table(tables), tables.n_digits, out)
        return out

    def release_means(self, frame, codes, sizes, block, offsets, n_means, key, tables) -> np.ndarray:
        noise = self.noise(n_means, key, _PIXELS, tables)
        out = self._buffer("means", n_means, np.uint8)
        d_codes, d_sizes, d_offsets = self._upload("codes", codes), self._upload("sizes", sizes), self._upload(
            "offsets", offsets)
        if tiled_path_applies(block, sizes):
            height, width = frame.shape[0], frame.shape[1]
            grid = (-(-width // TILE), -(-height // TILE))
            release_kernel_tiled[grid, (TILE, ROW_GROUPS)](frame, d_codes, d_sizes, block, d_offsets, noise, out)
        else:
            n_by, n_bx = codes.shape
            release_kernel[(n_bx, n_by), THREADS](frame, d_codes, d_sizes, block, d_offsets, noise, out)
        return out.copy_to_host()

    def release_means_i420(self, frame, height, width, codes, sizes, block, offsets, n_means, key,
                           tables) -> np.ndarray:
        noise = self.noise(n_means, key, _PIXELS, tables)
        out = self._buffer("means", n_means, np.uint8)
        flat = self.to_device(frame).reshape(frame.shape[0] * frame.shape[1])  # contiguous: a view
        n_by, n_bx = codes.shape
        release_kernel_i420[(n_bx, n_by), THREADS](flat, height, width, self._upload("codes", codes),
                                                   self._upload("sizes", sizes), block,
                                                   self._upload("offsets", offsets), noise, out)
        return out.copy_to_host()

    def noisy_complexity(self, frame, block, clip, n_blocks, grid_shape, key, tables) -> np.ndarray:
        noise = self.noise(n_blocks, key, _LAYOUT, tables)
        out = self._buffer("complexity", n_blocks, np.int64)
        n_by, n_bx = grid_shape
        complexity_kernel[(n_bx, n_by), (TILE, ROW_GROUPS)](frame, block, clip, noise, out)
        return out.copy_to_host()


def is_available() -> bool:
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver means "not available", never a crash
        return False
