"""Exact-by-construction discrete Laplace noise: fixed-point tables, keys and the stated deviation bound.

The sampler (dp.cell_math.discrete_laplace) inverts 64-bit fixed-point CDFs. The tables are computed here
in 60-digit decimal arithmetic, so the only deviation from the exact law is the rounding of each threshold
to a multiple of 2^-64 and the dropped tail beyond the last digit; `tv_bound` adds both up exactly, per
sample. Measured over scales from 0.5 to 1e9 it stays below 2^-56 (t = 12240, the default RGB camera:
2^-57.5); it grows with the scale, to 2^-55.78 at the largest that `sampler_digits` accepts (about 1.6e15),
so below 2^-55.7 everywhere. It enters the guarantee as a delta of at most n_samples * tv_bound per release.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np

from dp.cell_math import MAX_DIGITS
from dp.errors import ConfigError

TWO64 = 1 << 64
TWO63 = 1 << 63
_LN2_64 = Decimal("44.361419555836499802702855773323300356")  # 64 ln 2: exp(-x) < 2^-64 beyond it


@dataclass(frozen=True)
class LaplaceTables:
    """Fixed-point inversion tables for DiscreteLaplace(scale) and the bound on their deviation."""

    scale: Decimal
    zero_threshold: np.uint64  # Pr[Z = 0] in 63-bit fixed point
    digits: np.ndarray  # (n_digits, 255) uint64 CDF thresholds of each base-256 digit
    tv_bound: float  # total-variation distance to the exact law, per sample
    guide: np.ndarray = field(default=None, repr=False)  # (n_digits, 256) uint8, see __post_init__

    def __post_init__(self) -> None:
        # guide[j, v]: digit j's inverse at v * 2^56, where the CPU sampler starts its search for a
        # uniform whose top byte is v; the search ends at the full inversion's digit, exactly
        if self.guide is None:
            starts = np.arange(256, dtype=np.uint64) << np.uint64(56)
            guide = np.stack([np.searchsorted(row, starts, side="right") for row in self.digits])
            object.__setattr__(self, "guide", guide.astype(np.uint8))

    @property
    def n_digits(self) -> int:
        return int(self.digits.shape[0])


def _fixed(x: Decimal) -> int:
    """Round a probability to the nearest multiple of 2^-64, as an integer in [0, 2^64 - 1]."""
    v = int((x * TWO64).to_integral_value())
    return min(max(v, 0), TWO64 - 1)


def sampler_digits(scale: Decimal) -> int:
    """Base-256 digits the sampler draws for DiscreteLaplace(scale) (the dropped tail is under 2^-64); a
    ConfigError when the scale is not positive or needs more than MAX_DIGITS. Cheap: PixelizeSpec checks it."""
    with localcontext() as ctx:
        ctx.prec = 60
        t = Decimal(scale)
        if not t > 0:
            raise ConfigError(f"noise scale {scale} must be positive")
        n_digits = 1
        while Decimal(256) ** n_digits / t <= _LN2_64:
            n_digits += 1
            if n_digits > MAX_DIGITS:
                raise ConfigError(
                    f"noise scale {scale:.3g} is too large for the sampler (max about 1.6e15); raise eps or lower "
                    "m_pixels"
                )
    return n_digits


@lru_cache(maxsize=64)
def laplace_tables(scale: Decimal) -> LaplaceTables:
    """Tables for Pr[Z = z] ∝ exp(-|z|/scale); cached per scale (one per camera configuration)."""
    n_digits = sampler_digits(scale)
    with localcontext() as ctx:
        ctx.prec = 60
        t = Decimal(scale)
        q = (-1 / t).exp()
        p_zero = (1 - q) / (1 + q)
        # the zero decision compares the top 63 bits of a 64-bit uniform (its low bit is the sign)
        zero_threshold = min(max(int((p_zero * TWO63).to_integral_value()), 0), TWO63 - 1)
        tv = abs(Decimal(zero_threshold) / TWO63 - p_zero)
        # dropped tail: Pr[G >= 256^n_digits] = q^(256^n_digits) < 2^-64
        tv += (-(Decimal(256) ** n_digits) / t).exp()
        rows = np.zeros((n_digits, 255), dtype=np.uint64)
        for j in range(n_digits):
            step = Decimal(256) ** j  # digit j has ratio r = q^(256^j)
            denom = 1 - (-(step * 256) / t).exp()
            prev_err = Decimal(0)
            row_tv = Decimal(0)
            for d in range(255):
                cdf = (1 - (-(step * (d + 1)) / t).exp()) / denom
                fixed = _fixed(cdf)
                rows[j, d] = fixed
                err = Decimal(fixed) / TWO64 - cdf
                row_tv += abs(err - prev_err)
                prev_err = err
            row_tv += abs(prev_err)
            tv += row_tv / 2
    return LaplaceTables(scale=t, zero_threshold=np.uint64(zero_threshold), digits=rows, tv_bound=float(tv))


def discrete_laplace_pmf(z: np.ndarray, scale: float) -> np.ndarray:
    """The exact pmf (in float64) for tests and audits: (1-q)/(1+q) q^|z|."""
    q = np.exp(-1.0 / scale)
    return (1 - q) / (1 + q) * q ** np.abs(z)


def fresh_key() -> np.ndarray:
    """A new 256-bit ChaCha20 key from the OS's CSPRNG, as 8 words. Never logged, stored or returned."""
    return key_words(os.urandom(32))


def key_words(key: bytes) -> np.ndarray:
    """A 32-byte key as eight little-endian 32-bit words (in uint64, as the kernels take them)."""
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ConfigError("key must be 32 bytes (for example secrets.token_bytes(32)); tests only")
    return np.frombuffer(bytes(key), dtype="<u4").astype(np.uint64)


def sample(scale: float | Decimal, n: int, key: bytes | None = None) -> np.ndarray:
    """`n` independent DiscreteLaplace(scale) samples (int64) from the production sampler.

    For tests and audits of the sampler's law; releases draw their noise inside the kernels.
    """
    from dp.cell_math import DOMAIN_PIXELS
    from dp.kernels_cpu import fill_noise

    tables = laplace_tables(Decimal(repr(scale)) if isinstance(scale, float) else Decimal(scale))
    out = np.empty(int(n), dtype=np.int64)
    words = fresh_key() if key is None else key_words(key)
    fill_noise(words, DOMAIN_PIXELS, tables.zero_threshold, tables.digits, tables.guide, tables.n_digits, out)
    return out
