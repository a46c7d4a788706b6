"""Candidate CUDA kernels, timed against dp.kernels_cuda's by bench/gpu_check.py on a real GPU.

They are written to the same contract as the kernels they would replace (the same samples, the same means at
the same indices) and are checked for that, under the CUDA simulator (``gpu_check.py --small``) and on the
device, before they are timed. None of them is used by dp until a GPU has measured it faster.

* ``noise_kernel_u32``: the noise launch with ChaCha20 in native 32-bit words (cell_math carries them in
  uint64 and masks, which a GPU runs as pairs of 32-bit instructions) and the CPU's guide-table inversion
  (one guide byte and about one threshold per digit instead of an eight-step binary search, each step a
  dependent load).
* ``release_kernel_words``: the tiled sum kernel reading 32-bit words instead of bytes. A thread adds one word
  column over 4 rows in two registers of 16-bit lanes (0x00FF00FF masks), so a warp reads 128 contiguous
  bytes per row in one load instruction; each word lies in one cell (3b and 4 both divide 12b), and its lanes
  go to the channels (word + lane) mod 3. One shared atomic per channel and thread replaces the tree of
  log2(b) barriers. Needs HxWxC frames with W % 4 == 0 (every camera size) and the tiled path's layouts.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, int32, int64

from dp import kernels_cuda as kc

_U32 = np.uint32
_U64 = np.uint64
WORD_ROWS = 4  # rows a thread adds (4 divides every tiled cell size)
WORD_ROW_GROUPS = kc.TILE // WORD_ROWS


@cuda.jit(device=True, inline=True)
def _rotl(x, n):
    return _U32((x << _U32(n)) | (x >> _U32(32 - n)))


@cuda.jit(device=True, inline=True)
def _quarter(a, b, c, d):
    a = _U32(a + b)
    d = _rotl(_U32(d ^ a), 16)
    c = _U32(c + d)
    b = _rotl(_U32(b ^ c), 12)
    a = _U32(a + b)
    d = _rotl(_U32(d ^ a), 8)
    c = _U32(c + d)
    b = _rotl(_U32(b ^ c), 7)
    return a, b, c, d


@cuda.jit(device=True)
def chacha20_u32(key, counter, domain):
    """cell_math.chacha20_block(key, counter, domain, 0, 0) in uint32 words."""
    k0, k1, k2, k3 = _U32(key[0]), _U32(key[1]), _U32(key[2]), _U32(key[3])
    k4, k5, k6, k7 = _U32(key[4]), _U32(key[5]), _U32(key[6]), _U32(key[7])
    c0, c1, c2, c3 = _U32(0x61707865), _U32(0x3320646E), _U32(0x79622D32), _U32(0x6B206574)
    ctr = _U32(counter)
    m0 = _U32(domain)
    z = _U32(0)
    x0, x1, x2, x3, x4, x5, x6, x7 = c0, c1, c2, c3, k0, k1, k2, k3
    x8, x9, x10, x11, x12, x13, x14, x15 = k4, k5, k6, k7, ctr, m0, z, z
    for _ in range(10):
        x0, x4, x8, x12 = _quarter(x0, x4, x8, x12)
        x1, x5, x9, x13 = _quarter(x1, x5, x9, x13)
        x2, x6, x10, x14 = _quarter(x2, x6, x10, x14)
        x3, x7, x11, x15 = _quarter(x3, x7, x11, x15)
        x0, x5, x10, x15 = _quarter(x0, x5, x10, x15)
        x1, x6, x11, x12 = _quarter(x1, x6, x11, x12)
        x2, x7, x8, x13 = _quarter(x2, x7, x8, x13)
        x3, x4, x9, x14 = _quarter(x3, x4, x9, x14)
    return (_U32(x0 + c0), _U32(x1 + c1), _U32(x2 + c2), _U32(x3 + c3),
            _U32(x4 + k0), _U32(x5 + k1), _U32(x6 + k2), _U32(x7 + k3),
            _U32(x8 + k4), _U32(x9 + k5), _U32(x10 + k6), _U32(x11 + k7),
            _U32(x12 + ctr), _U32(x13 + m0), _U32(x14), _U32(x15))


@cuda.jit(device=True)
def _laplace_guided(w, base, zero_threshold, table, guide, n_digits):
    """cell_math.laplace_from_block on uint32 words, digits inverted from the guide table as on the CPU
    (dp.kernels_cpu._laplace_from_words): the same sample."""
    u = (_U64(w[base]) << _U64(32)) | _U64(w[base + 1])
    if (u >> _U64(1)) < zero_threshold:
        return int64(0)
    g = _U64(0)
    for j in range(n_digits):
        uj = (_U64(w[base + 2 + 2 * j]) << _U64(32)) | _U64(w[base + 3 + 2 * j])
        d = int64(guide[j, uj >> _U64(56)])
        while d < 255 and table[j, d] <= uj:
            d += 1
        g += _U64(d) << _U64(8 * j)
    magnitude = int64(g) + int64(1)
    if u & _U64(1):
        return -magnitude
    return magnitude


@cuda.jit
def noise_kernel_u32(key, domain, zero_threshold, table, guide, n_digits, out):
    """kernels_cuda.noise_kernel's samples: one thread per ChaCha block."""
    blk = cuda.grid(1)
    per = 2 if n_digits <= 3 else 1
    i = blk * per
    if i >= out.shape[0]:
        return
    w = chacha20_u32(key, blk, domain)
    out[i] = _laplace_guided(w, 0, zero_threshold, table, guide, n_digits)
    if per == 2 and i + 1 < out.shape[0]:
        out[i + 1] = _laplace_guided(w, 8, zero_threshold, table, guide, n_digits)


def words_path_applies(frame_shape, block: int, sizes) -> bool:
    height, width, channels = frame_shape
    return channels in (1, 3) and width % 4 == 0 and kc.tiled_path_applies(block, sizes)


@cuda.jit
def release_kernel_words(words, height, width, channels, codes, sizes, block, offsets, noise, out):
    """kernels_cuda.release_kernel_tiled's means from `words`, the frame as (H, W*C/4) uint32 (W % 4 == 0).

    Thread (tx, ty) of a 32x32 pixel tile adds word column tx (bytes 4tx..4tx+3 of the tile's row, 8C words
    per row) over rows 4ty..4ty+3.
    """
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * cuda.blockDim.x + tx
    n_threads = cuda.blockDim.x * cuda.blockDim.y
    n_bx = codes.shape[1]
    ty0 = cuda.blockIdx.y * kc.TILE
    tx0 = cuda.blockIdx.x * kc.TILE
    b = sizes[codes[ty0 // block, tx0 // block]]
    cells_x = kc.TILE // b
    n_sums = cells_x * cells_x * channels
    sums = cuda.shared.array(192, int32)  # (32 / 4)^2 cells x 3 channels
    for i in range(tid, n_sums, n_threads):
        sums[i] = 0
    row_words = width * channels // 4
    wx = cuda.blockIdx.x * (kc.TILE * channels // 4) + tx
    y_first = ty0 + ty * WORD_ROWS
    lo = _U32(0)  # byte lanes 0 and 2 of the word column, in 16-bit halves (4 rows of 255 fit)
    hi = _U32(0)  # byte lanes 1 and 3
    if wx < row_words:
        for r in range(WORD_ROWS):
            y = y_first + r
            if y < height:
                v = words[y, wx]
                lo = _U32(lo + (v & _U32(0x00FF00FF)))
                hi = _U32(hi + ((v >> _U32(8)) & _U32(0x00FF00FF)))
    cuda.syncthreads()  # zeroed sums visible to all
    if wx < row_words and y_first < height:
        cell = ((ty * WORD_ROWS) // b) * cells_x + ((4 * tx) // channels) // b
        l0 = int32(lo & _U32(0xFFFF))
        l2 = int32(lo >> _U32(16))
        l1 = int32(hi & _U32(0xFFFF))
        l3 = int32(hi >> _U32(16))
        if channels == 1:
            cuda.atomic.add(sums, cell, int32(l0 + l1 + l2 + l3))
        else:
            c = tx % 3  # byte 4tx + k of the tile row is channel (tx + k) mod 3
            cuda.atomic.add(sums, cell * 3 + c, int32(l0 + l3))
            cuda.atomic.add(sums, cell * 3 + (c + 1) % 3, l1)
            cuda.atomic.add(sums, cell * 3 + (c + 2) % 3, l2)
    cuda.syncthreads()  # every sample is in its cell sum before any mean is finalised
    kc.tile_means(sums, tid, n_threads, n_sums, channels, b, ty0, tx0, height, width, block, offsets, n_bx, noise,
                  out)


def launch_noise_u32(d_key, domain, tables, d_table, d_guide, noise):
    n = noise.shape[0]
    blocks = -(-n // 2) if tables.n_digits <= 3 else n
    noise_kernel_u32[-(-blocks // kc.NOISE_THREADS), kc.NOISE_THREADS](
        d_key, domain, tables.zero_threshold, d_table, d_guide, tables.n_digits, noise)


def launch_words(d_words, height, width, channels, d_codes, d_sizes, block, d_offsets, noise, out):
    grid = (-(-width // kc.TILE), -(-height // kc.TILE))
    release_kernel_words[grid, (kc.TILE * channels // 4, WORD_ROW_GROUPS)](
        d_words, height, width, channels, d_codes, d_sizes, block, d_offsets, noise, out)


def as_words(d_frame):
    """A device HxWxC uint8 frame (W % 4 == 0) as (H, W*C/4) uint32, without a copy."""
    height, width, channels = d_frame.shape
    return d_frame.reshape(height, width * channels).view(np.uint32)
