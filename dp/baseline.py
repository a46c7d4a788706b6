"""The classical DP-Pix (Fan 2018), as published: a sequential loop over b x b cells of a grey image.

Each cell mean gets Laplace noise of scale 255 m / (b^2 eps); here with colour handled correctly
(sensitivity 255 m C, section 2 of privacy.md) and the same exact discrete noise on the cell *sums*, so
its outputs follow exactly the law of `Pixelizer` in `fixed` mode. It is the reference for tests and the
baseline for benchmarks: plain Python and numpy, one cell at a time, as the paper's algorithm reads.
"""

from __future__ import annotations

import numpy as np

from dp.noise import fresh_key, key_words, laplace_tables
from dp.spec import PixelizeSpec


def _sample(words: np.ndarray, counter: int, tables) -> int:
    from dp.cell_math import DOMAIN_PIXELS
    from dp.kernels_cpu import discrete_laplace

    return int(discrete_laplace(words, counter, DOMAIN_PIXELS, tables.zero_threshold, tables.digits,
                                tables.n_digits))


def dp_pix(frame: np.ndarray, spec: PixelizeSpec, key: bytes | None = None) -> np.ndarray:
    """Fixed-grid DP-Pix of an HxWxC uint8 frame; returns the pixelized HxWxC uint8 image.

    Cells are visited in raster order, the noise counter is the running mean index: with the same key
    the result equals `Pixelizer(spec).release(frame, key).reconstruct()` for `layout="fixed"`.
    """
    b = spec.cell_size
    height, width, channels = frame.shape
    tables = laplace_tables(spec.noise_scale)
    words = fresh_key() if key is None else key_words(key)
    out = np.empty_like(frame)
    counter = 0
    for y in range(0, height, b):
        for x in range(0, width, b):
            cell = frame[y:y + b, x:x + b]
            n = cell.shape[0] * cell.shape[1]
            sums = cell.reshape(-1, channels).sum(axis=0, dtype=np.int64)
            for c in range(channels):
                v = int(sums[c]) + _sample(words, counter, tables)
                out[y:y + b, x:x + b, c] = min(max((2 * v + n) // (2 * n), 0), 255) if v > 0 else 0
                counter += 1
    return out
