"""Layouts: one cell-size code per macro-block, and the rule that picks them (privacy.md §3).

The grid of macro-blocks, the cell counts and the offsets of each block's means follow from public values
only (H, W, S, the codes). The adaptive rule picks, per block, the cell size `b` that minimises the
estimated squared error per pixel and channel:

    err(b) = detail_gain * g2 * (b^2 - 1)    detail averaged away inside a b x b cell (a ramp of squared
                                              gradient g2 loses about g2 * (b^2 - 1) / 6 per axis)
           + 2 t^2 / b^4                      variance of the discrete Laplace noise on a mean of b^2 pixels

where `g2` is a squared gradient per pixel read from already-private data: the previous release
(`previous`) or this frame's noisy complexity (`private`). Nothing here reads raw pixels.

For `color="yuv420"` the noise term is multiplied by `noise_error_factor("yuv420")` (about 30): a chroma
mean averages a quarter as many samples as the luma mean (16x the variance), and the BT.601 conversion
the picture is seen through amplifies chroma errors. Both terms are then in luma units (g2 reads luma).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np

from dp.errors import ConfigError
from dp.spec import PixelizeSpec

FALSE_DETAIL_RATE = 1e-3  # private mode: chance that noise alone makes a flat block look detailed


@dataclass(frozen=True)
class Grid:
    """The macro-block grid of an H x W frame; public."""

    height: int
    width: int
    block: int

    @property
    def shape(self) -> tuple[int, int]:
        return (-(-self.height // self.block), -(-self.width // self.block))

    def block_dims(self) -> tuple[np.ndarray, np.ndarray]:
        n_by, n_bx = self.shape
        hb = np.minimum(self.block, self.height - self.block * np.arange(n_by))
        wb = np.minimum(self.block, self.width - self.block * np.arange(n_bx))
        return hb, wb

    def cell_offsets(self, codes: np.ndarray, sizes: np.ndarray, channels: int) -> tuple[np.ndarray, int]:
        """Start of each block's means in the release (flattened row-major) and the total count."""
        from dp.kernels_cpu import cell_offsets

        offsets = np.empty(codes.size, dtype=np.int64)
        total = cell_offsets(np.ascontiguousarray(codes, dtype=np.uint8), np.asarray(sizes, dtype=np.int64),
                             self.block, self.height, self.width, channels, offsets)
        return offsets, int(total)


def uniform_codes(grid: Grid, spec: PixelizeSpec, cell_size: int | None = None) -> np.ndarray:
    code = spec.cell_sizes.index(cell_size if cell_size is not None else spec.cell_size)
    return np.full(grid.shape, code, dtype=np.uint8)


def map_codes(grid: Grid, spec: PixelizeSpec) -> np.ndarray:
    """The operator's static map, checked against this frame's grid."""
    arr = np.asarray(spec.layout_map, dtype=np.int64)
    if arr.shape != grid.shape:
        raise ConfigError(
            f"layout_map has shape {arr.shape} but a {grid.height}x{grid.width} frame with block_size "
            f"{grid.block} has {grid.shape[0]}x{grid.shape[1]} macro-blocks; give one cell size per block"
        )
    lookup = {s: i for i, s in enumerate(spec.cell_sizes)}
    return np.vectorize(lookup.__getitem__, otypes=[np.uint8])(arr)


@cache  # asked on every adaptive release
def noise_error_factor(color: str) -> float:
    """The squared error the noise puts into the seen picture, over that of one mean of b x b samples.

    RGB (and grey): 1, every channel's mean averages b^2 pixels. yuv420: the U and V means average
    (b/2)^2 samples, so 16x the variance of the Y mean, and each RGB channel of the picture mixes Y, U and V
    with the BT.601 video-range weights Release.reconstruct shows them with (R = cy Y' + cr_r V',
    G = cy Y' - cb_g U' - cr_g V', B = cy Y' + cb_b U'); in luma units that is 1 + 16 (w_U + w_V) / w_Y,
    w the squared weights per RGB channel on average: about 30.
    """
    if color != "yuv420":
        return 1.0
    from dp.color import yuv_to_rgb_coefficients

    _, cy, cr_r, cb_g, cr_g, cb_b = (float(v) for v in yuv_to_rgb_coefficients("bt601"))
    w_y = cy**2
    w_u = (cb_g**2 + cb_b**2) / 3.0
    w_v = (cr_r**2 + cr_g**2) / 3.0
    return 1.0 + 16.0 * (w_u + w_v) / w_y


@lru_cache(maxsize=64)
def rule_terms(cell_sizes: tuple[int, ...], noise_scale, color: str) -> tuple[np.ndarray, np.ndarray]:
    """(b^2 - 1, factor * 2 t^2 / b^4) per candidate size b: the two terms of choose_codes' error estimate
    (read-only; cached per camera configuration)."""
    sizes = np.asarray(cell_sizes, dtype=np.float64)
    t = float(noise_scale)
    size_terms, noise = sizes**2 - 1.0, noise_error_factor(color) * 2.0 * t * t / sizes**4
    size_terms.flags.writeable = noise.flags.writeable = False
    return size_terms, noise


def choose_codes(g2: np.ndarray, spec: PixelizeSpec) -> np.ndarray:
    """Per block, the code of the cell size minimising estimated detail loss plus noise variance:
    detail_gain * g2 * (b^2 - 1) + factor * 2 t^2 / b^4 (the first size on a tie)."""
    from dp.kernels_cpu import argmin_error

    size_terms, noise = rule_terms(spec.cell_sizes, spec.noise_scale, spec.color)
    g2 = np.ascontiguousarray(g2, dtype=np.float64)
    out = np.empty(g2.shape, dtype=np.uint8)
    argmin_error(g2.reshape(-1), float(spec.detail_gain), size_terms, noise, out.reshape(-1))
    return out


def g2_from_noisy_complexity(noisy_numerators: np.ndarray, grid: Grid, spec: PixelizeSpec) -> np.ndarray:
    """Squared mean clipped neighbour difference per block, from the noisy numerators (private mode).

    The score's noise is Laplace-like with scale t_l / P (P pair-channel terms in the block). The score is
    soft-thresholded by that scale times ln(1/FALSE_DETAIL_RATE) before squaring, so a flat block looks
    detailed (and gets small, noisy cells) with probability below FALSE_DETAIL_RATE. Post-processing only.
    """
    from dp.kernels_cpu import private_g2

    out = np.empty(grid.shape, dtype=np.float64)
    noisy = np.ascontiguousarray(noisy_numerators, dtype=np.int64).reshape(-1)
    private_g2(noisy, grid.height, grid.width, grid.block, spec.score_channels, float(spec.layout_noise_scale),
               float(np.log(1.0 / FALSE_DETAIL_RATE)), out)
    return out


def g2_from_release_stats(
    block_means: np.ndarray, block_mean_var: np.ndarray, within_g2: np.ndarray, block: int
) -> np.ndarray:
    """Squared gradient per block from the previous release (previous mode).

    A block released as one coarse cell is flat inside its own release, so reading only inside blocks
    would lock it at the coarsest size forever. The contrast *across* blocks, between neighbouring block
    means (every layout gives one per block: a common scale), sees structure again; noise variance is
    subtracted so a noisy flat area does not look detailed. The larger of the two readings is used.
    """
    from dp.kernels_cpu import previous_g2

    out = np.empty(within_g2.shape, dtype=np.float64)
    as_f64 = np.ascontiguousarray
    previous_g2(as_f64(block_means, dtype=np.float64), as_f64(block_mean_var, dtype=np.float64),
                as_f64(within_g2, dtype=np.float64), int(block), out)
    return out
