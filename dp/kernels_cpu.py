"""CPU kernels (Numba): thin parallel loops around dp.cell_math.

Cells are stored macro-block by macro-block in raster order, cells inside a block in raster order, channels
innermost; `offsets[k]` is where block k's means start. The noise of a mean is sample number `index` of
the frame's noise stream (fill_noise), so the CUDA kernels, which visit cells in another order, add the
same noise to the same cell.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import prange

from dp import cell_math


def _cache_follows_cell_math() -> bool:
    """Make Numba's on-disk cache of these kernels depend on dp/cell_math.py too.

    Numba invalidates a cached kernel only when the file defining it changes, not the files of the
    functions it inlines: after an edit of cell_math.py alone, a stale sampler would be loaded. A locator
    for this file adds cell_math.py's content hash to the source stamp. Should Numba's internals differ,
    caching is switched off rather than risked.
    """
    try:
        from numba.core import caching

        here = os.path.abspath(__file__)
        shared = os.path.abspath(cell_math.__file__)

        class _Locator(caching.InTreeCacheLocator):
            def get_source_stamp(self):
                st = os.stat(shared)
                return (super().get_source_stamp(), caching._hash_source_file(shared, st.st_mtime, st.st_size))

            @classmethod
            def from_function(cls, py_func, py_file):
                if os.path.abspath(py_file) != here:
                    return None
                return super().from_function(py_func, py_file)

        impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.68
        locators = impl._locator_classes
        if not any(c.__qualname__ == _Locator.__qualname__ and c.__module__ == __name__ for c in locators):
            locators.insert(0, _Locator)
        return True
    except (ImportError, AttributeError, TypeError):
        return False


_CACHE = _cache_follows_cell_math()
_m = cell_math.compile_with(numba.njit(cache=_CACHE, inline="always"))
discrete_laplace = _m.discrete_laplace
laplace_from_block = _m.laplace_from_block
samples_per_block = _m.samples_per_block
noisy_cell_mean = _m.noisy_cell_mean
clipped_difference = _m.clipped_difference
chacha20_block = _m.chacha20_block
_LAYOUT = cell_math.DOMAIN_LAYOUT


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def fill_noise(key, domain, zero_threshold, table, n_digits, out):
    """out[i] = sample i of the noise stream (key, domain), each ChaCha block computed once."""
    per = samples_per_block(n_digits)
    n = out.size
    for blk in prange((n + per - 1) // per):
        w = chacha20_block(key, blk, domain, 0, 0)
        i = blk * per
        out[i] = laplace_from_block(w, 0, zero_threshold, table, n_digits)
        if per == 2 and i + 1 < n:
            out[i + 1] = laplace_from_block(w, 8, zero_threshold, table, n_digits)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def release_means(frame, codes, sizes, block, offsets, noise, out):
    """Noisy uint8 means of every cell of every macro-block (the pixel part of a release); noise[i] is
    the sample for mean i (fill_noise)."""
    height, width, channels = frame.shape
    n_by, n_bx = codes.shape
    for by in prange(n_by):
        y0 = by * block
        bh = min(block, height - y0)
        for bx in range(n_bx):
            x0 = bx * block
            bw = min(block, width - x0)
            b = sizes[codes[by, bx]]
            ncy = (bh + b - 1) // b
            ncx = (bw + b - 1) // b
            base = offsets[by * n_bx + bx]
            for cy in range(ncy):
                ya = y0 + cy * b
                yb = min(ya + b, y0 + bh)
                for cx in range(ncx):
                    xa = x0 + cx * b
                    xb = min(xa + b, x0 + bw)
                    n = (yb - ya) * (xb - xa)
                    idx = base + (cy * ncx + cx) * channels
                    if channels == 3:
                        s0 = 0
                        s1 = 0
                        s2 = 0
                        for y in range(ya, yb):
                            for x in range(xa, xb):
                                s0 += frame[y, x, 0]
                                s1 += frame[y, x, 1]
                                s2 += frame[y, x, 2]
                        out[idx] = noisy_cell_mean(s0, noise[idx], n)
                        out[idx + 1] = noisy_cell_mean(s1, noise[idx + 1], n)
                        out[idx + 2] = noisy_cell_mean(s2, noise[idx + 2], n)
                    else:
                        for c in range(channels):
                            s = 0
                            for y in range(ya, yb):
                                for x in range(xa, xb):
                                    s += frame[y, x, c]
                            out[idx + c] = noisy_cell_mean(s, noise[idx + c], n)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def noisy_complexity(frame, block, clip, key, zero_threshold, table, n_digits, out):
    """Per macro-block: sum of min(|x_p - x_q|, G) over adjacent pairs inside the block and channels, plus
    discrete Laplace noise. Only the noisy value leaves this function."""
    height, width, channels = frame.shape
    n_by = (height + block - 1) // block
    n_bx = (width + block - 1) // block
    for by in prange(n_by):
        y0 = by * block
        y1 = min(y0 + block, height)
        for bx in range(n_bx):
            x0 = bx * block
            x1 = min(x0 + block, width)
            acc = 0
            for y in range(y0, y1):
                for x in range(x0, x1):
                    for c in range(channels):
                        v = frame[y, x, c]
                        if x + 1 < x1:
                            acc += clipped_difference(v, frame[y, x + 1, c], clip)
                        if y + 1 < y1:
                            acc += clipped_difference(v, frame[y + 1, x, c], clip)
            k = by * n_bx + bx
            out[k] = acc + discrete_laplace(key, k, _LAYOUT, zero_threshold, table, n_digits)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def reconstruct(means, codes, sizes, block, offsets, out):
    """Fill every cell of `out` (HxWxC) with its released mean, cell by cell (no per-pixel division)."""
    height, width, channels = out.shape
    n_by, n_bx = codes.shape
    for by in prange(n_by):
        y0 = by * block
        bh = min(block, height - y0)
        for bx in range(n_bx):
            x0 = bx * block
            bw = min(block, width - x0)
            b = sizes[codes[by, bx]]
            ncy = (bh + b - 1) // b
            ncx = (bw + b - 1) // b
            base = offsets[by * n_bx + bx]
            for cy in range(ncy):
                ya = y0 + cy * b
                yb = min(ya + b, y0 + bh)
                for cx in range(ncx):
                    xa = x0 + cx * b
                    xb = min(xa + b, x0 + bw)
                    idx = base + (cy * ncx + cx) * channels
                    if channels == 3:
                        m0 = means[idx]
                        m1 = means[idx + 1]
                        m2 = means[idx + 2]
                        for y in range(ya, yb):
                            for x in range(xa, xb):
                                out[y, x, 0] = m0
                                out[y, x, 1] = m1
                                out[y, x, 2] = m2
                    else:
                        for c in range(channels):
                            m = means[idx + c]
                            for y in range(ya, yb):
                                for x in range(xa, xb):
                                    out[y, x, c] = m


@numba.njit(cache=_CACHE, nogil=True)
def release_block_stats(means, codes, sizes, block, offsets, height, width, channels, cell_var_num):
    """Statistics of a release, per macro-block, for the `previous` layout rule.

    Returns (block_means[n_by, n_bx, C], block_mean_var[n_by, n_bx], within_g2[n_by, n_bx]):
    the pixel-weighted block means, the noise variance of those means (cell_var_num / N^2 per cell, with
    cell_var_num = 2 t^2), and the squared contrast between neighbouring cells inside the block, noise
    variance subtracted, per pixel of distance (0 where a block is one cell). All from released means only.
    """
    n_by, n_bx = codes.shape
    bmeans = np.zeros((n_by, n_bx, channels))
    bvar = np.zeros((n_by, n_bx))
    within = np.zeros((n_by, n_bx))
    for by in range(n_by):
        bh = min(block, height - by * block)
        for bx in range(n_bx):
            bw = min(block, width - bx * block)
            b = sizes[codes[by, bx]]
            ncy = (bh + b - 1) // b
            ncx = (bw + b - 1) // b
            base = offsets[by * n_bx + bx]
            npx = bh * bw
            for cy in range(ncy):
                ch = min(b, bh - cy * b)
                for cx in range(ncx):
                    cw = min(b, bw - cx * b)
                    idx = base + (cy * ncx + cx) * channels
                    for c in range(channels):
                        bmeans[by, bx, c] += means[idx + c] * (ch * cw)
                    bvar[by, bx] += cell_var_num / (npx * npx)
            for c in range(channels):
                bmeans[by, bx, c] /= npx
            # neighbouring cells inside the block: squared difference minus both cells' noise variance
            acc = 0.0
            cnt = 0
            for cy in range(ncy):
                ch = min(b, bh - cy * b)
                for cx in range(ncx):
                    cw = min(b, bw - cx * b)
                    idx = base + (cy * ncx + cx) * channels
                    va = cell_var_num / ((ch * cw) ** 2)
                    if cx + 1 < ncx:
                        cw2 = min(b, bw - (cx + 1) * b)
                        vb = cell_var_num / ((ch * cw2) ** 2)
                        for c in range(channels):
                            d = float(means[idx + c]) - float(means[idx + channels + c])
                            acc += d * d - va - vb
                            cnt += 1
                    if cy + 1 < ncy:
                        ch2 = min(b, bh - (cy + 1) * b)
                        vb = cell_var_num / ((ch2 * cw) ** 2)
                        idx2 = base + ((cy + 1) * ncx + cx) * channels
                        for c in range(channels):
                            d = float(means[idx + c]) - float(means[idx2 + c])
                            acc += d * d - va - vb
                            cnt += 1
            if cnt > 0:
                within[by, bx] = max(acc / cnt, 0.0) / (b * b)
    return bmeans, bvar, within
