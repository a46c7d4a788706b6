"""Integer-only math shared by the CPU and CUDA kernels: ChaCha20, the discrete Laplace sampler, cell means.

Every function here is plain Python on numpy integer scalars, written once and compiled twice
(`numba.njit` in kernels_cpu, `cuda.jit(device=True)` in kernels_cuda), so both backends produce the same
bytes for the same key. 32-bit ChaCha words are carried in uint64 and masked after every addition: uint32
arithmetic would be promoted differently by numba on the CPU and on the GPU, and Python's ints would not
wrap at all under the CUDA simulator.
"""

from __future__ import annotations

import numpy as np

M32 = np.uint64(0xFFFFFFFF)
U0 = np.uint64(0)
U1 = np.uint64(1)
U7, U8, U12, U16, U20, U24, U25, U32 = (np.uint64(v) for v in (7, 8, 12, 16, 20, 24, 25, 32))

# "expand 32-byte k" (RFC 8439 §2.3)
C0 = np.uint64(0x61707865)
C1 = np.uint64(0x3320646E)
C2 = np.uint64(0x79622D32)
C3 = np.uint64(0x6B206574)

# Nonce domains: pixel-sum noise and layout-complexity noise never share a ChaCha block.
DOMAIN_PIXELS = 1
DOMAIN_LAYOUT = 2

# A sample uses 2 + 2 * n_digits words of one ChaCha block (see discrete_laplace): at most 7 digits.
MAX_DIGITS = 7


def quarter_round(a, b, c, d):
    a = (a + b) & M32
    d = d ^ a
    d = ((d << U16) | (d >> U16)) & M32
    c = (c + d) & M32
    b = b ^ c
    b = ((b << U12) | (b >> U20)) & M32
    a = (a + b) & M32
    d = d ^ a
    d = ((d << U8) | (d >> U24)) & M32
    c = (c + d) & M32
    b = b ^ c
    b = ((b << U7) | (b >> U25)) & M32
    return a, b, c, d


def chacha20_block(key, counter, n0, n1, n2):
    """The ChaCha20 block function (RFC 8439 §2.3) as 16 output words (uint64 holding uint32).

    `key` is an array of 8 key words (little-endian uint32 values in uint64), `counter` the 32-bit block
    counter and `n0..n2` the three nonce words.
    """
    k0 = key[0]
    k1 = key[1]
    k2 = key[2]
    k3 = key[3]
    k4 = key[4]
    k5 = key[5]
    k6 = key[6]
    k7 = key[7]
    ctr = np.uint64(counter) & M32
    m0 = np.uint64(n0) & M32
    m1 = np.uint64(n1) & M32
    m2 = np.uint64(n2) & M32
    x0, x1, x2, x3 = C0, C1, C2, C3
    x4, x5, x6, x7 = k0, k1, k2, k3
    x8, x9, x10, x11 = k4, k5, k6, k7
    x12, x13, x14, x15 = ctr, m0, m1, m2
    for _ in range(10):
        x0, x4, x8, x12 = quarter_round(x0, x4, x8, x12)
        x1, x5, x9, x13 = quarter_round(x1, x5, x9, x13)
        x2, x6, x10, x14 = quarter_round(x2, x6, x10, x14)
        x3, x7, x11, x15 = quarter_round(x3, x7, x11, x15)
        x0, x5, x10, x15 = quarter_round(x0, x5, x10, x15)
        x1, x6, x11, x12 = quarter_round(x1, x6, x11, x12)
        x2, x7, x8, x13 = quarter_round(x2, x7, x8, x13)
        x3, x4, x9, x14 = quarter_round(x3, x4, x9, x14)
    return (
        (x0 + C0) & M32, (x1 + C1) & M32, (x2 + C2) & M32, (x3 + C3) & M32,
        (x4 + k0) & M32, (x5 + k1) & M32, (x6 + k2) & M32, (x7 + k3) & M32,
        (x8 + k4) & M32, (x9 + k5) & M32, (x10 + k6) & M32, (x11 + k7) & M32,
        (x12 + ctr) & M32, (x13 + m0) & M32, (x14 + m1) & M32, (x15 + m2) & M32,
    )


def _digit(table, j, u):
    """Inverse CDF of one base-256 digit: the number of thresholds of row j at or below u (0..255)."""
    if u < table[j, 0]:
        return 0  # high digits are almost always 0: one compare instead of eight
    lo = 0
    hi = 255
    while lo < hi:
        mid = (lo + hi) >> 1
        if table[j, mid] <= u:
            lo = mid + 1
        else:
            hi = mid
    return lo


def samples_per_block(n_digits):
    """Noise samples drawn from one ChaCha20 block: 2 when 3 digits suffice (t < 378,000), else 1."""
    if n_digits <= 3:
        return 2
    return 1


def laplace_from_block(w, base, zero_threshold, digit_table, n_digits):
    """A discrete Laplace sample, Pr[Z = z] proportional to exp(-|z|/t), from words base.. of block w.

    Z = 0 with probability (1-q)/(1+q), q = exp(-1/t); otherwise Z = ±(1 + G) where G is geometric
    (Pr[G >= k] = q^k). G's base-256 digits are independent truncated geometrics (q^g factorises over
    digits), each drawn by inversion against a 64-bit fixed-point CDF (`digit_table`, built by dp.noise).
    A sample takes 2 + 2 * n_digits words: words 0-1 give a 64-bit uniform whose low bit is the sign and
    whose top 63 bits decide zero, then one 64-bit uniform per digit.
    """
    u = (w[base] << U32) | w[base + 1]
    if (u >> U1) < zero_threshold:
        return np.int64(0)
    g = U0
    scale = U1
    for j in range(n_digits):
        uj = (w[base + 2 + 2 * j] << U32) | w[base + 3 + 2 * j]
        g = g + np.uint64(_digit(digit_table, j, uj)) * scale
        scale = scale << U8
    magnitude = np.int64(g) + np.int64(1)
    if u & U1:
        return -magnitude
    return magnitude


def discrete_laplace(key, counter, domain, zero_threshold, digit_table, n_digits):
    """Sample number `counter` of the noise stream (key, domain): block counter // 2, words 0-7 or 8-15,
    when two samples share a block (see samples_per_block); block `counter`, words 0.., otherwise."""
    if samples_per_block(n_digits) == 2:
        w = chacha20_block(key, counter >> 1, domain, 0, 0)
        return laplace_from_block(w, (counter & 1) * 8, zero_threshold, digit_table, n_digits)
    w = chacha20_block(key, counter, domain, 0, 0)
    return laplace_from_block(w, 0, zero_threshold, digit_table, n_digits)


def noisy_cell_mean(cell_sum, noise, n_pixels):
    """clip(round((S + Z) / n), 0, 255) in integers, rounding half up: the same byte on every backend."""
    v = np.int64(cell_sum) + np.int64(noise)
    if v <= 0:
        return np.int64(0)
    n = np.int64(n_pixels)
    q = (2 * v + n) // (2 * n)
    if q > 255:
        return np.int64(255)
    return q


def clipped_difference(a, b, clip):
    """min(|a - b|, G): one pair-channel term of the private layout's complexity score."""
    d = np.int64(a) - np.int64(b)
    if d < 0:
        d = -d
    if d > clip:
        return np.int64(clip)
    return d


SHARED_FUNCTIONS = (
    "quarter_round",
    "chacha20_block",
    "_digit",
    "samples_per_block",
    "laplace_from_block",
    "discrete_laplace",
    "noisy_cell_mean",
    "clipped_difference",
)


def compile_with(jit):
    """Compile the shared functions with `jit` (numba.njit or cuda.jit(device=True)).

    Each function is rebuilt over a private copy of this module's globals in which its callees are the
    compiled versions, so the same source compiles for either target. Returns a namespace of them.
    """
    import types

    namespace = dict(globals())
    compiled = {}
    for name in SHARED_FUNCTIONS:
        fn = globals()[name]
        clone = types.FunctionType(fn.__code__, namespace, name, fn.__defaults__, fn.__closure__)
        clone.__doc__ = fn.__doc__
        namespace[name] = compiled[name] = jit(clone)
    return types.SimpleNamespace(**compiled)
