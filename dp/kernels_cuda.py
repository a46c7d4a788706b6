"""CUDA kernels (Numba-CUDA): one thread block per macro-block, around the same dp.cell_math functions.

Imported lazily (only when a CUDA backend is asked for), so dp works without numba-cuda or a GPU. Means
land at the same indices as on the CPU and take their noise from the same ChaCha counter, so the two
backends agree byte for byte for the same key.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64

from dp import cell_math

_m = cell_math.compile_with(cuda.jit(device=True))
discrete_laplace = _m.discrete_laplace
noisy_cell_mean = _m.noisy_cell_mean
clipped_difference = _m.clipped_difference

THREADS = 256
MAX_SHARED_SUMS = 4096  # int32 cell sums of one macro-block: (block / smallest cell)^2 * C must fit
_PIXELS = cell_math.DOMAIN_PIXELS
_LAYOUT = cell_math.DOMAIN_LAYOUT


@cuda.jit
def release_kernel(frame, codes, sizes, block, offsets, key, zero_threshold, table, n_digits, out):
    bx = cuda.blockIdx.x
    by = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    height = frame.shape[0]
    width = frame.shape[1]
    channels = frame.shape[2]
    n_bx = codes.shape[1]
    sums = cuda.shared.array(MAX_SHARED_SUMS, int32)
    y0 = by * block
    x0 = bx * block
    bh = min(block, height - y0)
    bw = min(block, width - x0)
    b = sizes[codes[by, bx]]
    ncx = (bw + b - 1) // b
    n_sums = ((bh + b - 1) // b) * ncx * channels
    for i in range(tid, n_sums, THREADS):
        sums[i] = 0
    cuda.syncthreads()  # zeroed before any thread adds into it
    for p in range(tid, bh * bw, THREADS):
        y = p // bw
        x = p - y * bw
        cell = (y // b) * ncx + x // b
        for c in range(channels):
            cuda.atomic.add(sums, cell * channels + c, int32(frame[y0 + y, x0 + x, c]))
    cuda.syncthreads()  # every pixel is in its cell sum before any mean is finalised
    base = offsets[by * n_bx + bx]
    for i in range(tid, n_sums, THREADS):
        cell = i // channels
        cy = cell // ncx
        cx = cell - cy * ncx
        n = min(b, bh - cy * b) * min(b, bw - cx * b)
        z = discrete_laplace(key, base + i, _PIXELS, zero_threshold, table, n_digits)
        out[base + i] = noisy_cell_mean(sums[i], z, n)


@cuda.jit
def complexity_kernel(frame, block, clip, key, zero_threshold, table, n_digits, out):
    bx = cuda.blockIdx.x
    by = cuda.blockIdx.y
    tid = cuda.threadIdx.x
    height = frame.shape[0]
    width = frame.shape[1]
    channels = frame.shape[2]
    total = cuda.shared.array(1, int64)
    if tid == 0:
        total[0] = 0
    cuda.syncthreads()
    y0 = by * block
    x0 = bx * block
    bh = min(block, height - y0)
    bw = min(block, width - x0)
    acc = int64(0)
    for p in range(tid, bh * bw, THREADS):
        y = p // bw
        x = p - y * bw
        for c in range(channels):
            v = frame[y0 + y, x0 + x, c]
            if x + 1 < bw:
                acc += clipped_difference(v, frame[y0 + y, x0 + x + 1, c], clip)
            if y + 1 < bh:
                acc += clipped_difference(v, frame[y0 + y + 1, x0 + x, c], clip)
    cuda.atomic.add(total, 0, acc)
    cuda.syncthreads()  # all partial sums are in before the block's score is noised
    if tid == 0:
        k = by * cuda.gridDim.x + bx
        out[k] = total[0] + discrete_laplace(key, k, _LAYOUT, zero_threshold, table, n_digits)


class CudaBackend:
    """Launches the kernels; keeps the noise tables on the device per noise scale."""

    name = "cuda"

    def __init__(self) -> None:
        self._tables: dict = {}

    def _device_table(self, tables):
        hit = self._tables.get(tables.scale)
        if hit is None:
            hit = cuda.to_device(tables.digits)
            self._tables[tables.scale] = hit
        return hit

    @staticmethod
    def to_device(frame):
        if hasattr(frame, "__cuda_array_interface__"):
            return frame
        return cuda.to_device(np.ascontiguousarray(frame))

    def release_means(self, frame, codes, sizes, block, offsets, n_means, key, tables) -> np.ndarray:
        out = cuda.device_array(n_means, dtype=np.uint8)
        n_by, n_bx = codes.shape
        release_kernel[(n_bx, n_by), THREADS](
            frame, cuda.to_device(codes), cuda.to_device(sizes), block, cuda.to_device(offsets),
            cuda.to_device(key), tables.zero_threshold, self._device_table(tables), tables.n_digits, out,
        )
        return out.copy_to_host()

    def noisy_complexity(self, frame, block, clip, n_blocks, grid_shape, key, tables) -> np.ndarray:
        out = cuda.device_array(n_blocks, dtype=np.int64)
        n_by, n_bx = grid_shape
        complexity_kernel[(n_bx, n_by), THREADS](
            frame, block, clip, cuda.to_device(key), tables.zero_threshold, self._device_table(tables),
            tables.n_digits, out,
        )
        return out.copy_to_host()


def is_available() -> bool:
    try:
        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver means "not available", never a crash
        return False
