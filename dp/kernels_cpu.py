"""CPU kernels (Numba) around dp.cell_math, written so that LLVM vectorizes their inner loops.

Cells are stored macro-block by macro-block in raster order, cells inside a block in raster order, channels
innermost; `offsets[k]` is where block k's means start. The noise of a mean is sample number `index` of
the frame's noise stream, so the CUDA kernels, which visit cells in another order, add the same noise to
the same cell. The CPU draws that stream with its own ChaCha20 (many blocks per SIMD pass) and a
guide-table inversion; both give exactly cell_math's words and samples (tested index by index).
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
    functions it inlines: after an edit of cell_math.py alone, a stale sampler would be loaded. So for each
    of Numba's cache locators (NUMBA_CACHE_DIR, next to the source, the user's cache directory, ...) a
    variant for this file, tried first and in the same order, adds cell_math.py's content hash to the
    source stamp: wherever the cache lands (a read-only install, a container, NUMBA_CACHE_DIR), it follows
    cell_math.py. Should Numba's internals differ, caching is switched off rather than risked.
    """
    try:
        from numba.core import caching

        here = os.path.abspath(__file__)
        shared = os.path.abspath(cell_math.__file__)

        class _FollowsCellMath:
            _dp_follows_cell_math = True

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
        if not any(getattr(c, "_dp_follows_cell_math", False) for c in locators):
            ours = [type(f"_CellMath{base.__name__}", (_FollowsCellMath, base), {"__module__": __name__})
                    for base in locators]
            if not ours:
                return False
            locators[:0] = ours
        # Numba caches where it can write (NUMBA_CACHE_DIR, the source's __pycache__, the user's cache
        # directory) and refuses to define a cache=True function at all when it can write nowhere (a read-only
        # image run with a read-only home): then compile in memory instead, every start, rather than fail.
        for probe, path in ((_cache_follows_cell_math, here), (cell_math.compile_with, shared)):
            if not any(cls.from_function(probe, path) is not None for cls in locators):
                return False
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
_PIXELS = cell_math.DOMAIN_PIXELS


# --- ChaCha20, many blocks per SIMD pass (CPU only) -------------------------------------------------
# The same block function as cell_math.chacha20_block, in uint32 and written as one straight-line loop
# body over block counters, so that LLVM runs 16 blocks per AVX-512 pass (8 per AVX2 pass) with native
# rotates. Two details keep the vectorizer on: the ten double rounds are spelled out (an inner `for`
# loop makes the block loop non-innermost), and the key words are loaded before the loop (loads from
# `key` inside it would need more run-time alias checks than LLVM allows).
_U32 = np.uint32
_I32 = np.int32
_LITTLE_ENDIAN = np.little_endian


@numba.njit(inline="always")
def _rotl(x, n):
    return _U32((x << _U32(n)) | (x >> _U32(32 - n)))


@numba.njit(inline="always")
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


@numba.njit(inline="always")
def _double_round(x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15):
    x0, x4, x8, x12 = _quarter(x0, x4, x8, x12)
    x1, x5, x9, x13 = _quarter(x1, x5, x9, x13)
    x2, x6, x10, x14 = _quarter(x2, x6, x10, x14)
    x3, x7, x11, x15 = _quarter(x3, x7, x11, x15)
    x0, x5, x10, x15 = _quarter(x0, x5, x10, x15)
    x1, x6, x11, x12 = _quarter(x1, x6, x11, x12)
    x2, x7, x8, x13 = _quarter(x2, x7, x8, x13)
    x3, x4, x9, x14 = _quarter(x3, x4, x9, x14)
    return x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15


@numba.njit(cache=_CACHE, nogil=True)
def chacha20_blocks(key, first, count, domain, out):
    """Blocks first .. first+count-1 of the stream (key, domain): out[w, i] is word w of block first+i,
    equal to cell_math.chacha20_block(key, first + i, domain, 0, 0)[w]. `out` is 16 x N uint32."""
    k0, k1, k2, k3 = _U32(key[0]), _U32(key[1]), _U32(key[2]), _U32(key[3])
    k4, k5, k6, k7 = _U32(key[4]), _U32(key[5]), _U32(key[6]), _U32(key[7])
    c0, c1, c2, c3 = _U32(0x61707865), _U32(0x3320646E), _U32(0x79622D32), _U32(0x6B206574)
    m0 = _U32(domain)
    z = _U32(0)
    for i in range(count):
        ctr = _U32(first + i)
        x0, x1, x2, x3, x4, x5, x6, x7 = c0, c1, c2, c3, k0, k1, k2, k3
        x8, x9, x10, x11, x12, x13, x14, x15 = k4, k5, k6, k7, ctr, m0, z, z
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = _double_round(
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
        out[0, i] = _U32(x0 + c0)
        out[1, i] = _U32(x1 + c1)
        out[2, i] = _U32(x2 + c2)
        out[3, i] = _U32(x3 + c3)
        out[4, i] = _U32(x4 + k0)
        out[5, i] = _U32(x5 + k1)
        out[6, i] = _U32(x6 + k2)
        out[7, i] = _U32(x7 + k3)
        out[8, i] = _U32(x8 + k4)
        out[9, i] = _U32(x9 + k5)
        out[10, i] = _U32(x10 + k6)
        out[11, i] = _U32(x11 + k7)
        out[12, i] = _U32(x12 + ctr)
        out[13, i] = _U32(x13 + m0)
        out[14, i] = _U32(x14)
        out[15, i] = _U32(x15)


@numba.njit(inline="always")
def _word64(w, hi, k):
    return (np.uint64(w[hi, k]) << np.uint64(32)) | np.uint64(w[hi + 1, k])


@numba.njit(inline="always")
def _laplace_from_words(w, k, base, zero_threshold, table, guide, n_digits):
    """cell_math.laplace_from_block on column k of a chacha20_blocks buffer, with a guide table.

    guide[j, v] is the digit of the smallest uniform whose top byte is v, so the inversion starts there
    and steps up past the thresholds at or below u: the same digit as the binary search of
    cell_math._digit, in about one compare instead of eight unpredictable branches.
    """
    u = _word64(w, base, k)
    if (u >> np.uint64(1)) < zero_threshold:
        return np.int64(0)
    g = np.uint64(0)
    for j in range(n_digits):
        uj = _word64(w, base + 2 + 2 * j, k)
        d = np.int64(guide[j, uj >> np.uint64(56)])
        # A bucket of the guide holds about one threshold of a nearly uniform digit, so whether u passes it
        # is a coin flip: add the first step as a 0/1 instead of branching on it (a mispredicted branch
        # cost more than the rest of the inversion); further steps are rare.
        if d < 255:
            d += np.int64(table[j, d] <= uj)
        while d < 255 and table[j, d] <= uj:
            d += 1
        g += np.uint64(d) << np.uint64(8 * j)
    magnitude = np.int64(g) + np.int64(1)
    if u & np.uint64(1):
        return -magnitude
    return magnitude


_NOISE_CHUNK = 256  # ChaCha blocks per pass: 16 KiB of words, which stay in L1


@numba.njit(inline="always")
def _noise_range(key, domain, i0, i1, zero_threshold, table, guide, n_digits, out):
    """out[0 : i1-i0] = samples i0 .. i1-1 of the noise stream (key, domain), as
    cell_math.discrete_laplace(key, i, domain, ...) would draw them."""
    per = samples_per_block(n_digits)
    w = np.empty((16, _NOISE_CHUNK), dtype=np.uint32)
    blk = i0 // per
    blk_end = (i1 + per - 1) // per
    while blk < blk_end:
        count = min(_NOISE_CHUNK, blk_end - blk)
        # the domain as uint32 at the call: an int64 argument makes LLVM vectorize the block loop half as wide
        chacha20_blocks(key, blk, count, _U32(domain), w)
        for k in range(count):
            for h in range(per):
                i = (blk + k) * per + h
                if i0 <= i < i1:
                    out[i - i0] = _laplace_from_words(w, k, 8 * h, zero_threshold, table, guide, n_digits)
        blk += count


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def fill_noise(key, domain, zero_threshold, table, guide, n_digits, out):
    """out[i] = sample i of the noise stream (key, domain), as cell_math.discrete_laplace(key, i, ...)."""
    n = out.size
    step = _NOISE_CHUNK * samples_per_block(n_digits)
    for part in prange((n + step - 1) // step):
        i0 = part * step
        i1 = min(i0 + step, n)
        _noise_range(key, domain, i0, i1, zero_threshold, table, guide, n_digits, out[i0:i1])


# --- cell sums ---------------------------------------------------------------------------------------
# A macro-block row is cut into runs of neighbouring blocks with the same cell size. For each band of
# cell rows in a run, the pixel rows are first added vertically into one row of counters (contiguous
# bytes: vectorized; uint16 while 255 * b fits, else int32), then each cell adds its columns of them.
# Row views indexed from 0 let LLVM drop Numba's negative-index wraparound and vectorize the vertical pass.
@numba.njit(inline="always")
def _add_rows(flat, y_first, y_end, j0, j1, acc):
    """acc[j0:j1] = sum of flat[y, j0:j1] over y_first <= y < y_end."""
    view = acc[j0:j1]
    nj = j1 - j0
    row = flat[y_first, j0:j1]
    for j in range(nj):
        view[j] = row[j]
    for y in range(y_first + 1, y_end):
        row = flat[y, j0:j1]
        for j in range(nj):
            view[j] += row[j]


_NO_CONV = np.zeros(0, dtype=np.int32)  # _plane_row_means on a plane as it is
_RUN_SAMPLES = 3072  # samples per run row at most: the run's row counters (6 or 12 KiB) stay in L1


@numba.njit(inline="always")
def _run_end(codes, by, bx, samples_per_block):
    """The first block after bx in row by whose layout code differs from block bx's (or that would make
    the run's rows longer than _RUN_SAMPLES)."""
    n_bx = min(codes.shape[1], bx + max(1, _RUN_SAMPLES // samples_per_block))
    end = bx + 1
    while end < n_bx and codes[by, end] == codes[by, bx]:
        end += 1
    return end


@numba.njit(inline="always")
def _cell_sum1(acc, xa, xe):
    """sum(acc[xa:xe]) in uint32: a cell row holds at most 1024 counters of at most 255 * 1024 each (the
    spec's largest cell), under 2^28. The common full cells have a constant trip count, which LLVM turns
    into a few vector adds; a loop of unknown length 8 or 16 stays scalar."""
    s = np.uint32(0)
    w = xe - xa
    if w == 16:
        for x in range(16):
            s += np.uint32(acc[xa + x])
    elif w == 8:
        for x in range(8):
            s += np.uint32(acc[xa + x])
    elif w == 32:
        for x in range(32):
            s += np.uint32(acc[xa + x])
    else:
        for x in range(xa, xe):
            s += np.uint32(acc[x])
    return s


# --- the RGB picture of an I420 frame ---------------------------------------------------------------
# dp.color's rule for a channel is clip((cy (Y - y_offset) + t) >> 8, 0, 255), with t the channel's chroma
# term (rounding bias included). The kernels evaluate it in int16 lanes, twice as many per vector as int32:
# with cy = 256 + a and t - cy * y_offset = 256 q + r (0 <= r < 256), the same value is
#     Y + q + ((a Y + r) >> 8),
# because the whole 256 (Y + q) leaves the shift exact. For 0 <= a < 128 (cy is 256 at full range and 298 at
# video range) a Y + r < 2^15, and q stays within +-300: nothing overflows int16.
_I16 = np.int16
_U16 = np.uint16


@numba.njit(inline="always")
def _chroma_split(u, v, shift, cr_r, cb_g, cr_g, cb_b):
    """(q_r, q_g, q_b, r_r, r_g, r_b) of one chroma sample (U, V) = (u, v), int16; shift = cy * y_offset.
    Each product is narrowed to int32 as it is made: left in Numba's int64, the G term became four 64-bit
    vector multiplies (three micro-ops each on Intel)."""
    d = _I32(_I32(u) - _I32(128))
    e = _I32(_I32(v) - _I32(128))
    t_r = _I32(_I32(_I32(cr_r * e) + _I32(128)) - shift)
    t_g = _I32(_I32(_I32(128) - _I32(cb_g * d)) - _I32(_I32(cr_g * e) + shift))
    t_b = _I32(_I32(_I32(cb_b * d) + _I32(128)) - shift)
    return (_I16(t_r >> _I32(8)), _I16(t_g >> _I32(8)), _I16(t_b >> _I32(8)),
            _I16(t_r & _I32(255)), _I16(t_g & _I32(255)), _I16(t_b & _I32(255)))


@numba.njit(inline="always")
def _chroma_row(urow, vrow, j0, j1, conv, terms):
    """terms[c, j] = q and terms[3 + c, j] = r of channel c (R, G, B) at chroma column j, j0 <= j < j1."""
    shift = _I32(conv[1] * conv[0])
    cr_r, cb_g, cr_g, cb_b = conv[2], conv[3], conv[4], conv[5]
    u = urow[j0:j1]
    v = vrow[j0:j1]
    q_r, q_g, q_b = terms[0, j0:j1], terms[1, j0:j1], terms[2, j0:j1]
    r_r, r_g, r_b = terms[3, j0:j1], terms[4, j0:j1], terms[5, j0:j1]
    for j in range(j1 - j0):
        q_r[j], q_g[j], q_b[j], r_r[j], r_g[j], r_b[j] = _chroma_split(u[j], v[j], shift, cr_r, cb_g, cr_g, cb_b)


@numba.njit(inline="always")
def _level(y, ay, q, r):
    """One RGB sample, Y + q + ((a Y + r) >> 8) clipped to 0..255, in int16 (ay = a Y; see above)."""
    return min(max(_I16(_I16(y + q) + _I16(_I16(ay + r) >> _I16(8))), _I16(0)), _I16(255))


@numba.njit(inline="always")
def _luma_pair(pair, a):
    """(Y, a Y) of the left and right pixel of a pair read as one uint16, int16. Two bytes in one load keep
    every loop over pixel pairs free of strided loads, which LLVM does not vectorize well."""
    lo = _I16(pair & _U16(0xFF))
    hi = _I16(pair >> _U16(8))
    if not _LITTLE_ENDIAN:
        lo, hi = hi, lo
    return lo, _I16(a * lo), hi, _I16(a * hi)


@numba.njit(inline="always")
def _pair_sums(pair, a, q_r, q_g, q_b, r_r, r_g, r_b):
    """Channels R, G, B of a pixel pair, each added over its two pixels (int16, at most 510)."""
    y0, ay0, y1, ay1 = _luma_pair(pair, a)
    return (_I16(_level(y0, ay0, q_r, r_r) + _level(y1, ay1, q_r, r_r)),
            _I16(_level(y0, ay0, q_g, r_g) + _level(y1, ay1, q_g, r_g)),
            _I16(_level(y0, ay0, q_b, r_b) + _level(y1, ay1, q_b, r_b)))


@numba.njit(inline="always")
def _add_rgb_pair_rows(pairs, chroma, y_first, y_end, j0, j1, conv, terms, acc):
    """acc[c, j] = sum over y_first <= y < y_end of channel c of pixels 2j and 2j + 1 of row y of the RGB
    picture of an I420 frame, pixel for pixel the picture i420_to_rgb makes, for j0 <= j < j1. `pairs` is
    the frame's luma as uint16 pixel pairs, `chroma` its U rows then V rows, `terms` 6 int16 rows of
    scratch. Conversion and sums stay in rows of chroma width, which LLVM vectorizes, and the picture is
    never stored. acc's dtype must hold 510 (y_end - y_first)."""
    hc = chroma.shape[0] // 2
    a = _I16(conv[1] - 256)
    nj = j1 - j0
    a_r, a_g, a_b = acc[0, j0:j1], acc[1, j0:j1], acc[2, j0:j1]
    q_r, q_g, q_b = terms[0, j0:j1], terms[1, j0:j1], terms[2, j0:j1]
    r_r, r_g, r_b = terms[3, j0:j1], terms[4, j0:j1], terms[5, j0:j1]
    for y in range(y_first, y_end):
        if y == y_first or y % 2 == 0:  # a chroma row serves two luma rows
            _chroma_row(chroma[y // 2], chroma[hc + y // 2], j0, j1, conv, terms)
        row = pairs[y, j0:j1]
        # two loops, not a branch inside one: LLVM did not vectorize the loop with the branch in it
        if y == y_first:
            for j in range(nj):
                a_r[j], a_g[j], a_b[j] = _pair_sums(row[j], a, q_r[j], q_g[j], q_b[j], r_r[j], r_g[j], r_b[j])
        else:
            for j in range(nj):
                s_r, s_g, s_b = _pair_sums(row[j], a, q_r[j], q_g[j], q_b[j], r_r[j], r_g[j], r_b[j])
                a_r[j] += s_r
                a_g[j] += s_g
                a_b[j] += s_b


@numba.njit(inline="always")
def _plane_row_means(flat, channels, height, width, block, sizes, sub, codes, by, offsets, stride, first_channel,
                     noise, first, acc, out, chroma, conv, terms):
    """The means of one macro-block row of one image plane.

    `flat` is the plane (height x width*channels, in the plane's own samples); the plane is the frame
    subsampled by `sub` in both directions (1: full resolution, 2: 4:2:0 chroma), so its blocks and cells
    are block/sub and size/sub samples wide. Channel c of the cell k of a block goes to
    out[offsets[block] + k*stride + first_channel + c], with noise[that index - first]. The row counters
    are acc[0] (width*channels of them).

    With conv (not empty), `flat` is an I420 frame's luma as uint16 pixel pairs and `chroma` its chroma
    rows, and the plane is their RGB picture under conv (i420_to_rgb's rule; channels is 1, stride 3, every
    cell size even): acc[c, j] counts channel c of pixels 2j and 2j + 1.
    """
    rgb = conv.size > 0
    n_bx = codes.shape[1]
    blk = block // sub
    y0 = by * blk
    bh = min(blk, height - y0)
    bx = 0
    while bx < n_bx:
        end = _run_end(codes, by, bx, blk * (3 if rgb else channels))
        b = sizes[codes[by, bx]] // sub
        j0 = bx * blk * channels
        j1 = min(end * blk, width) * channels
        ncy = (bh + b - 1) // b
        for cy in range(ncy):
            ya = y0 + cy * b
            yb = min(ya + b, y0 + bh)
            if rgb:
                _add_rgb_pair_rows(flat, chroma, ya, yb, j0 // 2, j1 // 2, conv, terms, acc)
            else:
                _add_rows(flat, ya, yb, j0, j1, acc[0])
            row = acc[0]
            for k in range(bx, end):
                xk = k * blk
                bw = min(blk, width - xk)
                ncx = (bw + b - 1) // b
                base = offsets[by * n_bx + k] + cy * ncx * stride + first_channel
                for cx in range(ncx):
                    xa = xk + cx * b
                    xe = min(xa + b, xk + bw)
                    n = (yb - ya) * (xe - xa)
                    idx = base + cx * stride
                    z = idx - first
                    if rgb:
                        for c in range(3):
                            out[idx + c] = noisy_cell_mean(_cell_sum1(acc[c], xa // 2, xe // 2), noise[z + c], n)
                    elif channels == 3:
                        s0 = 0
                        s1 = 0
                        s2 = 0
                        for x in range(xa, xe):
                            s0 += row[3 * x]
                            s1 += row[3 * x + 1]
                            s2 += row[3 * x + 2]
                        out[idx] = noisy_cell_mean(s0, noise[z], n)
                        out[idx + 1] = noisy_cell_mean(s1, noise[z + 1], n)
                        out[idx + 2] = noisy_cell_mean(s2, noise[z + 2], n)
                    elif channels == 1:
                        out[idx] = noisy_cell_mean(_cell_sum1(row, xa, xe), noise[z], n)
                    else:
                        for c in range(channels):
                            s = 0
                            for x in range(xa, xe):
                                s += row[x * channels + c]
                            out[idx + c] = noisy_cell_mean(s, noise[z + c], n)
        bx = end


@numba.njit(inline="always")
def _row_noise(key, offsets, by, n_bx, zero_threshold, table, guide, n_digits, out):
    """The noise samples of macro-block row by's means (a contiguous range of the stream) and its start."""
    first = offsets[by * n_bx]
    last = offsets[by * n_bx + n_bx] if (by + 1) * n_bx < offsets.size else out.size
    noise = np.empty(last - first, dtype=np.int64)
    _noise_range(key, _PIXELS, first, last, zero_threshold, table, guide, n_digits, noise)
    return noise, first


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def release_means(frame, codes, sizes, block, offsets, key, zero_threshold, table, guide, n_digits, row_proto, out):
    """Noisy uint8 means of every cell of every macro-block (the pixel part of a release).

    Mean i gets sample i of the noise stream (key, DOMAIN_PIXELS), the same sample the CUDA backend adds.
    Each macro-block row draws the samples of its own means (a contiguous range) right before it needs
    them, so noise and sums run in one parallel pass and the noise never leaves the cache.
    """
    height, width, channels = frame.shape
    n_by, n_bx = codes.shape
    flat = frame.reshape(height, width * channels)
    for by in prange(n_by):
        noise, first = _row_noise(key, offsets, by, n_bx, zero_threshold, table, guide, n_digits, out)
        acc = np.empty((1, width * channels), dtype=row_proto.dtype)
        _plane_row_means(flat, channels, height, width, block, sizes, 1, codes, by, offsets, channels, 0,
                         noise, first, acc, out, flat, _NO_CONV, acc)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def release_means_i420(frame, height, width, codes, sizes, block, offsets, key, zero_threshold, table, guide,
                       n_digits, row_proto, out):
    """release_means for a planar YUV 4:2:0 frame, as the decoder delivers it: `frame` is the
    (3H/2) x W I420 array (Y rows, then U and V at H/2 x W/2 each), H and W even, cell sizes even.

    Each cell releases (Y, U, V): the mean of its b x b luma samples and of its b/2 x b/2 samples of each
    chroma plane, with the same noise as an RGB cell (a changed pixel position moves one Y sum and the U
    and V sums of its 2x2 block's cell, by at most 255 each: the sensitivity stays 255 * m * 3).
    """
    n_by, n_bx = codes.shape
    hc = height // 2
    wc = width // 2
    luma = frame[:height]
    chroma = frame[height:].reshape(2 * hc, wc)  # U rows, then V rows
    for by in prange(n_by):
        noise, first = _row_noise(key, offsets, by, n_bx, zero_threshold, table, guide, n_digits, out)
        acc = np.empty((1, width), dtype=row_proto.dtype)
        _plane_row_means(luma, 1, height, width, block, sizes, 1, codes, by, offsets, 3, 0, noise, first, acc, out,
                         luma, _NO_CONV, acc)
        _plane_row_means(chroma[:hc], 1, hc, wc, block, sizes, 2, codes, by, offsets, 3, 1, noise, first, acc, out,
                         luma, _NO_CONV, acc)
        _plane_row_means(chroma[hc:], 1, hc, wc, block, sizes, 2, codes, by, offsets, 3, 2, noise, first, acc, out,
                         luma, _NO_CONV, acc)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def release_means_rgb_from_i420(frame, height, width, conv, codes, sizes, block, offsets, key, zero_threshold,
                                table, guide, n_digits, acc_proto, out):
    """release_means of the RGB picture of an I420 frame ((3H/2) x W, H and W even) under conv (see
    i420_to_rgb), for even cell sizes, without making the picture: pixel rows are converted into planar
    rows of counters as the sums need them, one per pixel pair and channel, of acc_proto's dtype (uint16
    holds a cell column of 510 * b for cells up to 128 px, int32 the spec's largest, 1024 px). The same
    bytes as release_means(i420_to_rgb(frame), ...)."""
    n_by = codes.shape[0]
    n_bx = codes.shape[1]
    pairs = frame[:height].view(np.uint16)
    chroma = frame[height:].reshape(height, width // 2)  # U rows, then V rows
    for by in prange(n_by):
        noise, first = _row_noise(key, offsets, by, n_bx, zero_threshold, table, guide, n_digits, out)
        acc = np.empty((3, width // 2), dtype=acc_proto.dtype)
        terms = np.empty((6, width // 2), dtype=np.int16)
        _plane_row_means(pairs, 1, height, width, block, sizes, 1, codes, by, offsets, 3, 0, noise, first, acc, out,
                         chroma, conv, terms)


@numba.njit(cache=_CACHE, nogil=True)
def cell_offsets(codes, sizes, block, height, width, channels, out):
    """out[k] = where macro-block k's means start (row-major blocks); returns the number of means."""
    n_by, n_bx = codes.shape
    total = 0
    for by in range(n_by):
        bh = min(block, height - by * block)
        for bx in range(n_bx):
            bw = min(block, width - bx * block)
            b = sizes[codes[by, bx]]
            out[by * n_bx + bx] = total
            total += ((bh + b - 1) // b) * ((bw + b - 1) // b) * channels
    return total


_U8_ALL = np.uint8(255)


@numba.njit(inline="always")
def _clipped_absdiff(a, b, clip, mask):
    """min(|a - b|, clip) & mask for uint8 a, b (max - min stays in uint8), widened to the uint16 counters."""
    return np.uint16(min(np.uint8(max(a, b) - min(a, b)), clip) & mask)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def noisy_complexity(frame, block, clip, noise, column_proto, out):
    """Per macro-block: sum of min(|x_p - x_q|, G) over adjacent pairs inside the block and channels, plus
    noise[k] (discrete Laplace, stream DOMAIN_LAYOUT). Only the noisy value leaves this function.

    Whole pixel rows at a time, in uint8 (|a - b| = max - min, clipped at G <= 255; a pair that crosses
    a block border is masked to 0) added into per-column counters of column_proto's dtype (uint16 holds
    2 * 255 * block for block <= 128), which are summed per block at the end of each block row.
    """
    height, width, channels = frame.shape
    n_by = (height + block - 1) // block
    n_bx = (width + block - 1) // block
    flat = frame.reshape(height, width * channels)
    cl = np.uint8(min(clip, 255))
    n_cols = width * channels
    keep = np.full(n_cols, np.uint8(255))  # 0 where the pair (j, j + C) crosses into the next block
    for j in range(n_cols):
        if (j // channels) % block == block - 1:
            keep[j] = 0
    for by in prange(n_by):
        y0 = by * block
        y1 = min(y0 + block, height)
        column = np.zeros(n_cols, dtype=column_proto.dtype)
        for y in range(y0, y1):
            row = flat[y]
            right = flat[y, channels:]  # the same channel one pixel right (a view from 0: vectorizes)
            if y + 1 < y1:  # both pairs of each sample in one pass over the counters
                below = flat[y + 1]
                for j in range(n_cols - channels):
                    across = _clipped_absdiff(right[j], row[j], cl, keep[j])
                    column[j] += across + _clipped_absdiff(below[j], row[j], cl, _U8_ALL)
                for j in range(n_cols - channels, n_cols):
                    column[j] += _clipped_absdiff(below[j], row[j], cl, _U8_ALL)
            else:
                for j in range(n_cols - channels):
                    column[j] += _clipped_absdiff(right[j], row[j], cl, keep[j])
        for bx in range(n_bx):
            acc = 0
            for j in range(bx * block * channels, min((bx + 1) * block, width) * channels):
                acc += column[j]
            k = by * n_bx + bx
            out[k] = acc + noise[k]


@numba.njit(inline="always")
def _contrast(bmeans, bvar, y0, x0, y1, x1):
    """Squared difference of two blocks' means (mean over channels) minus both means' noise variance."""
    channels = bmeans.shape[2]
    s = 0.0
    for c in range(channels):
        d = bmeans[y1, x1, c] - bmeans[y0, x0, c]
        s = d * d if c == 0 else s + d * d
    return s / channels - (bvar[y1, x1] + bvar[y0, x0])


@numba.njit(cache=_CACHE, nogil=True)
def previous_g2(bmeans, bvar, within, block, out):
    """dp.layout.g2_from_release_stats per block (out: n_by x n_bx float64): the mean contrast with the
    neighbouring blocks (above, below, left, right: added in that order), clipped at 0, per pixel of the
    block's area, or `within` where that is larger."""
    n_by, n_bx = within.shape
    for by in range(n_by):
        for bx in range(n_bx):
            acc = 0.0
            cnt = 0
            if by > 0:
                acc += _contrast(bmeans, bvar, by - 1, bx, by, bx)
                cnt += 1
            if by + 1 < n_by:
                acc += _contrast(bmeans, bvar, by, bx, by + 1, bx)
                cnt += 1
            if bx > 0:
                acc += _contrast(bmeans, bvar, by, bx - 1, by, bx)
                cnt += 1
            if bx + 1 < n_bx:
                acc += _contrast(bmeans, bvar, by, bx, by, bx + 1)
                cnt += 1
            across = max(acc / cnt, 0.0) / float(block * block) if cnt > 0 else 0.0
            out[by, bx] = max(across, within[by, bx])


@numba.njit(cache=_CACHE, nogil=True)
def private_g2(noisy, height, width, block, channels, t_l, log_inv_rate, out):
    """dp.layout.g2_from_noisy_complexity per block (out: n_by x n_bx float64): the noisy score over its
    pair-channel terms, soft-thresholded by t_l / pairs * log_inv_rate, squared; 0 for blocks without pairs."""
    n_by, n_bx = out.shape
    for by in range(n_by):
        h = min(block, height - by * block)
        for bx in range(n_bx):
            w = min(block, width - bx * block)
            pairs = float(channels * (h * (w - 1) + w * (h - 1)))
            if pairs > 0:
                shrunk = max(noisy[by * n_bx + bx] / pairs - (t_l / pairs) * log_inv_rate, 0.0)
                out[by, bx] = shrunk * shrunk
            else:
                out[by, bx] = 0.0


@numba.njit(cache=_CACHE, nogil=True)
def argmin_error(g2, detail_gain, size_terms, noise_terms, out):
    """out[k] = the first i minimising detail_gain * max(g2[k], 0) * size_terms[i] + noise_terms[i]: the code
    dp.layout.choose_codes picks (flat arrays)."""
    for k in range(g2.size):
        g = detail_gain * max(g2[k], 0.0)
        best = 0
        best_err = g * size_terms[0] + noise_terms[0]
        for i in range(1, size_terms.size):
            err = g * size_terms[i] + noise_terms[i]
            if err < best_err:
                best = i
                best_err = err
        out[k] = best


def complexity_column_proto(block: int) -> np.ndarray:
    """The counter dtype noisy_complexity needs: a column gathers at most 2 * 255 * block."""
    return np.zeros(0, dtype=np.uint16 if 2 * 255 * block <= 0xFFFF else np.uint32)


@numba.njit(inline="always")
def _band_rows(codes, sizes, by, block):
    """Rows per band of macro-block row by: the gcd of its cell sizes, so no cell boundary falls inside a
    band and one template row serves every pixel row of the band."""
    g = block
    for bx in range(codes.shape[1]):
        a = sizes[codes[by, bx]]
        while a:
            g, a = a, g % a
    return g


@numba.njit(inline="always")
def _band_block(codes, sizes, offsets, channels, block, width, by, bx, y0, ya):
    """Macro-block bx of row by, seen from the band starting at pixel row ya (block row starts at y0): its
    first column xk, width bw, cell size b, cells per row ncx, and the index (in cells, not means) of its
    first cell in the band. Cell cx then spans columns xk + cx*b .. min(xk + (cx+1)*b, xk + bw)."""
    xk = bx * block
    bw = min(block, width - xk)
    b = sizes[codes[by, bx]]
    ncx = (bw + b - 1) // b
    first = offsets[by * codes.shape[1] + bx] // channels + ((ya - y0) // b) * ncx
    return xk, bw, b, ncx, first


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def reconstruct(means, codes, sizes, block, offsets, out):
    """Fill every cell of `out` (HxWxC) with its released mean: per band of cell rows, one template row
    of the band's means is built, then copied into each pixel row of the band (contiguous copies)."""
    height, width, channels = out.shape
    n_by, n_bx = codes.shape
    flat = out.reshape(height, width * channels)
    for by in prange(n_by):
        y0 = by * block
        bh = min(block, height - y0)
        top = np.empty_like(flat[0])
        g = _band_rows(codes, sizes, by, block)
        for band in range((bh + g - 1) // g):
            ya = y0 + band * g
            yb = min(ya + g, y0 + bh)
            for bx in range(n_bx):
                xk, bw, b, ncx, first = _band_block(codes, sizes, offsets, channels, block, width, by, bx, y0, ya)
                for cx in range(ncx):
                    xa = xk + cx * b
                    xe = min(xa + b, xk + bw)
                    idx = (first + cx) * channels
                    for x in range(xa, xe):
                        for c in range(channels):
                            top[x * channels + c] = means[idx + c]
            nj = width * channels
            for y in range(ya, yb):
                row = flat[y]
                for j in range(nj):
                    row[j] = top[j]


@numba.njit(cache=_CACHE)
def i420_layout(height, width):
    """(even height, even width, luma stride, chroma stride) of the I420 buffer reconstruct_i420 writes:
    planar Y, U, V; rows padded to a multiple of 4 bytes (GStreamer's default video layout)."""
    he = height + height % 2
    we = width + width % 2
    return he, we, (we + 3) & ~3, (we // 2 + 3) & ~3


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def reconstruct_i420(means, codes, sizes, block, offsets, height, width, yuv_means, out):
    """The privatized RGB image written straight into an I420 buffer (see i420_layout), for encoders.

    Each cell's RGB mean is converted once to BT.601 limited-range YUV (integer rule); the frame is
    padded to even size by repeating its last row and column. Chroma sample (i, j) takes the colour of
    pixel (2i, 2j)'s cell, exact whenever cells have even sizes at even offsets (the default sizes).
    Row padding bytes are zeroed. Replaces reconstruct + an RGB->I420 conversion of every pixel.
    With yuv_means the means already are (Y, U, V) per cell (a color="yuv420" release) and are copied.
    """
    n_by, n_bx = codes.shape
    he, we, sy, sc = i420_layout(height, width)
    n_cells = means.size // 3
    ycell = np.empty(n_cells, dtype=np.uint8)
    ucell = np.empty(n_cells, dtype=np.uint8)
    vcell = np.empty(n_cells, dtype=np.uint8)
    for k in range(n_cells):
        if yuv_means:
            ycell[k] = means[3 * k]
            ucell[k] = means[3 * k + 1]
            vcell[k] = means[3 * k + 2]
            continue
        r = np.int32(means[3 * k])
        g = np.int32(means[3 * k + 1])
        b = np.int32(means[3 * k + 2])
        ycell[k] = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
        ucell[k] = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
        vcell[k] = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    luma = out[: sy * he].reshape(he, sy)
    u_plane = out[sy * he: sy * he + sc * (he // 2)].reshape(he // 2, sc)
    v_plane = out[sy * he + sc * (he // 2): sy * he + 2 * sc * (he // 2)].reshape(he // 2, sc)
    for by in prange(n_by):
        y0 = by * block
        bh = min(block, height - y0)
        ty = np.zeros(sy, dtype=np.uint8)
        tu = np.zeros(sc, dtype=np.uint8)
        tv = np.zeros(sc, dtype=np.uint8)
        g = _band_rows(codes, sizes, by, block)
        for band in range((bh + g - 1) // g):
            ya = y0 + band * g
            yb = min(ya + g, y0 + bh)
            for bx in range(n_bx):
                xk, bw, b, ncx, first = _band_block(codes, sizes, offsets, 3, block, width, by, bx, y0, ya)
                for cx in range(ncx):
                    xa = xk + cx * b
                    xe = min(xa + b, xk + bw)
                    k = first + cx
                    for x in range(xa, xe):
                        ty[x] = ycell[k]
                    for x in range((xa + 1) // 2, (xe + 1) // 2):
                        tu[x] = ucell[k]
                        tv[x] = vcell[k]
            if we > width:
                ty[width] = ty[width - 1]
            last = he if yb == height else yb  # the padding row repeats the last one
            for y in range(ya, last):
                row = luma[y]
                for j in range(sy):
                    row[j] = ty[j]
                if y % 2 == 0:
                    urow = u_plane[y // 2]
                    vrow = v_plane[y // 2]
                    for j in range(sc):
                        urow[j] = tu[j]
                        vrow[j] = tv[j]


@numba.njit(cache=_CACHE, nogil=True)
def yuv_means_to_rgb(means, out):
    """Per cell (Y, U, V) means, BT.601 limited range, to (R, G, B) (integer rule, clipped to 0..255)."""
    for k in range(means.size // 3):
        c = np.int32(means[3 * k]) - 16
        d = np.int32(means[3 * k + 1]) - 128
        e = np.int32(means[3 * k + 2]) - 128
        out[3 * k] = min(max((298 * c + 409 * e + 128) >> 8, 0), 255)
        out[3 * k + 1] = min(max((298 * c - 100 * d - 208 * e + 128) >> 8, 0), 255)
        out[3 * k + 2] = min(max((298 * c + 516 * d + 128) >> 8, 0), 255)


@numba.njit(parallel=True, cache=_CACHE, nogil=True)
def i420_to_rgb(frame, height, width, conv, out):
    """The RGB picture (H x W x 3) of an I420 frame ((3H/2) x W, H and W even): pixel (y, x) converts
    (luma[y, x], U and V at (y // 2, x // 2)) with conv = (y_offset, cy, cr_r, cb_g, cr_g, cb_b) in 1/256
    units, rounded and clipped (dp.color.i420_to_rgb). release_means_rgb_from_i420 sums the same picture
    without storing it."""
    hc = height // 2
    wc = width // 2
    chroma = frame[height:].reshape(2 * hc, wc)
    pairs = frame[:height].view(np.uint16)
    a = _I16(conv[1] - 256)
    flat = out.reshape(height, width * 3)
    for yc in prange(hc):
        terms = np.empty((6, wc), dtype=np.int16)
        _chroma_row(chroma[yc], chroma[hc + yc], 0, wc, conv, terms)
        q_r, q_g, q_b, r_r, r_g, r_b = terms[0], terms[1], terms[2], terms[3], terms[4], terms[5]
        for y in range(2 * yc, 2 * yc + 2):
            row = pairs[y]
            orow = flat[y]
            for j in range(wc):
                y0, ay0, y1, ay1 = _luma_pair(row[j], a)
                orow[6 * j] = _level(y0, ay0, q_r[j], r_r[j])
                orow[6 * j + 1] = _level(y0, ay0, q_g[j], r_g[j])
                orow[6 * j + 2] = _level(y0, ay0, q_b[j], r_b[j])
                orow[6 * j + 3] = _level(y1, ay1, q_r[j], r_r[j])
                orow[6 * j + 4] = _level(y1, ay1, q_g[j], r_g[j])
                orow[6 * j + 5] = _level(y1, ay1, q_b[j], r_b[j])


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


@numba.njit(cache=_CACHE)
def previous_rule_codes(means, codes, sizes, block, offsets, height, width, channels, yuv, cell_var_num,
                        detail_gain, size_terms, noise_terms, out):
    """The `previous` layout for the next frame, from a release, in one call: dp.layout.choose_codes of
    dp.layout.g2_from_release_stats of release_block_stats (yuv: of its luma means only, the chroma means
    carry 16x the noise variance). out: n_by x n_bx uint8. The GIL stays held: these are microseconds of
    work, which a GIL hand-off to the camera's ingest thread would cost more than."""
    if yuv:
        bmeans, bvar, within = release_block_stats(means[0::3].copy(), codes, sizes, block, offsets // 3, height,
                                                   width, 1, cell_var_num)
    else:
        bmeans, bvar, within = release_block_stats(means, codes, sizes, block, offsets, height, width, channels,
                                                   cell_var_num)
    g2 = np.empty(within.shape)
    previous_g2(bmeans, bvar, within, block, g2)
    argmin_error(g2.reshape(-1), detail_gain, size_terms, noise_terms, out.reshape(-1))
