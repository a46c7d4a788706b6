"""The adaptive rule's arithmetic (dp.layout, compiled in dp.kernels_cpu) against the formulas of its
docstrings, written out in numpy: the same codes and the same squared gradients, to the last bit."""

from __future__ import annotations

import numpy as np
import pytest

from dp import PixelizeSpec
from dp import layout as lay


def numpy_choose_codes(g2: np.ndarray, spec: PixelizeSpec) -> np.ndarray:
    sizes = np.asarray(spec.cell_sizes, dtype=np.float64)
    t = float(spec.noise_scale)
    noise = lay.noise_error_factor(spec.color) * 2.0 * t * t / sizes**4
    detail = spec.detail_gain * np.maximum(g2, 0.0)[..., None] * (sizes**2 - 1.0)
    return np.argmin(detail + noise, axis=-1).astype(np.uint8)


def numpy_private_g2(noisy: np.ndarray, grid: lay.Grid, spec: PixelizeSpec) -> np.ndarray:
    hb, wb = grid.block_dims()
    h, w = hb[:, None].astype(np.float64), wb[None, :].astype(np.float64)
    pairs = spec.score_channels * (h * (w - 1) + w * (h - 1))
    t_l = float(spec.layout_noise_scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        shrunk = np.maximum(noisy.reshape(grid.shape) / pairs - (t_l / pairs) * np.log(1 / lay.FALSE_DETAIL_RATE), 0)
    return np.where(pairs > 0, shrunk * shrunk, 0.0)


def numpy_previous_g2(bmeans: np.ndarray, bvar: np.ndarray, within: np.ndarray, block: int) -> np.ndarray:
    acc, cnt = np.zeros(within.shape), np.zeros(within.shape)
    for d, v, a, b in (
        (bmeans[1:] - bmeans[:-1], bvar[1:] + bvar[:-1], np.s_[1:, :], np.s_[:-1, :]),  # above, then below
        (bmeans[:, 1:] - bmeans[:, :-1], bvar[:, 1:] + bvar[:, :-1], np.s_[:, 1:], np.s_[:, :-1]),  # left, right
    ):
        sq = (d * d).mean(axis=-1) - v
        for sl in (a, b):
            acc[sl] += sq
            cnt[sl] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        across = np.where(cnt > 0, np.maximum(acc / np.maximum(cnt, 1), 0.0) / float(block * block), 0.0)
    return np.maximum(across, within)


@pytest.mark.parametrize("color", ["rgb", "yuv420"])
def test_the_private_rule_is_its_formula(color, rng):
    for _ in range(60):
        spec = PixelizeSpec(eps_pix=float(rng.choice([0.25, 1, 16])), m_pixels=int(rng.choice([1, 16])),
                            layout="private", eps_layout=float(rng.choice([0.05, 2.0])), color=color)
        h, w = (int(v) * 2 for v in rng.integers(1, 90, 2))  # even sizes, partial blocks included
        grid = lay.Grid(h, w, spec.block_size)
        noisy = rng.integers(-10**6, 10**7, grid.shape[0] * grid.shape[1])
        g2 = lay.g2_from_noisy_complexity(noisy, grid, spec)
        assert np.array_equal(g2, numpy_private_g2(noisy, grid, spec))
        for scores in (g2, rng.exponential(10.0 ** rng.uniform(-3, 4), grid.shape), np.zeros(grid.shape)):
            assert np.array_equal(lay.choose_codes(scores, spec), numpy_choose_codes(scores, spec))


def test_the_previous_rule_is_its_formula(rng):
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(1, 25, 2))
        channels = int(rng.choice([1, 3]))
        bmeans = rng.uniform(0, 255, (*shape, channels))
        bvar = rng.exponential(10.0 ** rng.uniform(-2, 3), shape)
        within = np.where(rng.random(shape) < 0.5, 0.0, rng.exponential(5.0, shape))
        block = int(rng.choice([8, 32, 64]))
        assert np.array_equal(lay.g2_from_release_stats(bmeans, bvar, within, block),
                              numpy_previous_g2(bmeans, bvar, within, block))


@pytest.mark.parametrize("color", ["rgb", "yuv420"])
def test_the_fused_previous_rule_is_the_composition_of_its_steps(color, rng):
    """Pixelizer's one-call rule (kernels_cpu.previous_rule_codes) against release_block_stats, then
    g2_from_release_stats, then choose_codes, on releases with mixed layouts and changing settings."""
    from dp import Pixelizer
    from dp.kernels_cpu import release_block_stats

    for _ in range(25):
        eps_pix, m = float(rng.choice([0.5, 4.0, 64.0])), int(rng.choice([1, 16]))
        spec = PixelizeSpec(eps_pix=eps_pix, m_pixels=m, layout="previous", color=color)
        h, w = (int(v) * 2 for v in rng.integers(8, 80, 2))
        px = Pixelizer(spec, backend="cpu")
        # blocky content with flat and busy regions, so the previous layout mixes cell sizes
        frame = np.repeat(np.repeat(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), 8, 0), 8, 1)
        frame = frame[:h, :w] // rng.integers(1, 4, (h, w, 1), dtype=np.uint8)
        shown = frame if color == "rgb" else rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
        px.release(shown)
        prev = px.release(shown)
        # the next frame's settings may differ from the release's: the rule takes the noise from the release
        nxt = spec.replace(eps_pix=float(rng.choice([1.0, 8.0])))
        grid = lay.Grid(h, w, nxt.block_size)
        t = 255.0 * prev.m_pixels * prev.channels / prev.eps_pix
        means, offsets, channels = prev.means, prev._offsets, prev.channels
        if color == "yuv420":
            means, offsets, channels = means[0::3].copy(), offsets // 3, 1
        stats = release_block_stats(means, prev.layout, np.asarray(prev.cell_sizes, dtype=np.int64),
                                    prev.block_size, offsets, h, w, channels, 2.0 * t * t)
        want = lay.choose_codes(lay.g2_from_release_stats(*stats, prev.block_size), nxt)
        assert np.array_equal(Pixelizer._previous_codes(prev, nxt, grid), want)
