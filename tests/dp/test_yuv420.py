"""color='yuv420': releasing the decoder's planar I420 frames as they are (privacy.md §2, §3)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import ConfigError, FrameError, Pixelizer, PixelizeSpec, Release, kernels_cpu, rgb_to_i420
from dp.cell_math import DOMAIN_PIXELS
from dp.noise import key_words, laplace_tables

MODES = ("fixed", "map", "previous", "private")


def yuv_spec(mode: str, *, m_pixels: int = 1, eps_pix: float = 2.0, shape=(38, 54)) -> PixelizeSpec:
    kw: dict = {"cell_sizes": (2, 4, 8, 16), "block_size": 16}
    if mode == "fixed":
        kw = {"cell_size": 6}  # partial cells on both borders
    elif mode == "map":
        n_by, n_bx = -(-shape[0] // 16), -(-shape[1] // 16)
        kw["layout_map"] = [[(2, 4, 8, 16)[(i + 2 * j) % 4] for j in range(n_bx)] for i in range(n_by)]
    elif mode == "private":
        kw["eps_layout"] = 0.5
    return PixelizeSpec(eps_pix=eps_pix, m_pixels=m_pixels, layout=mode, color="yuv420", **kw)


def random_i420(rng, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)


def index_maps(rel: Release):
    """Mean index of every Y sample, and of every U and V sample (the cell of its 2x2 block's top-left)."""
    idx = np.empty((rel.height, rel.width, 3), dtype=np.int64)
    kernels_cpu.reconstruct(np.arange(rel.means.size, dtype=np.int64), rel.layout,
                            np.asarray(rel.cell_sizes, dtype=np.int64), rel.block_size, rel._offsets, idx)
    return idx[:, :, 0], idx[::2, ::2, 1], idx[::2, ::2, 2]


def planes(frame: np.ndarray, h: int, w: int):
    chroma = frame[h:].reshape(h, w // 2)
    return frame[:h], chroma[: h // 2], chroma[h // 2:]


def exact_sums(frame, rel):
    """The un-noised sum and sample count of every mean, from the public layout (test-only)."""
    sums = np.zeros(rel.means.size, dtype=np.int64)
    counts = np.zeros(rel.means.size, dtype=np.int64)
    for plane, index in zip(planes(frame, rel.height, rel.width), index_maps(rel), strict=True):
        sums += np.bincount(index.ravel(), weights=plane.astype(np.int64).ravel(), minlength=sums.size).astype(np.int64)
        counts += np.bincount(index.ravel(), minlength=sums.size)
    return sums, counts


@pytest.mark.parametrize("mode", MODES)
def test_yuv420_release_equals_the_reference_sums_plus_the_reference_noise(mode, rng, key):
    """Every mean is clip(round((S + Z_i) / n)) with S and n from the layout's Y, U and V samples and Z_i
    sample i of the shared scalar sampler: the kernel's plane geometry and noise indices are right."""
    h, w = 38, 54
    px = Pixelizer(yuv_spec(mode), backend="cpu")
    px.release(random_i420(rng, h, w))  # previous mode: a mixed layout for the next frame
    frame = random_i420(rng, h, w)
    rel = px.release(frame, key=key)
    assert rel.color == "yuv420" and (rel.height, rel.width, rel.channels) == (h, w, 3)
    sums, counts = exact_sums(frame, rel)
    assert counts.min() >= 1
    tables = laplace_tables(px.spec.noise_scale)
    words = key_words(key)
    want = [kernels_cpu.noisy_cell_mean(s, kernels_cpu.discrete_laplace(words, i, DOMAIN_PIXELS, tables.zero_threshold,
                                                                        tables.digits, tables.n_digits), n)
            for i, (s, n) in enumerate(zip(sums.tolist(), counts.tolist(), strict=True))]
    assert rel.means.tolist() == want


@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_changing_m_positions_moves_yuv_sums_by_at_most_255_m_3(mode, data):
    """A changed pixel position changes its Y sample and its 2x2 block's U and V samples (to extremes
    here): the L1 change of all sums stays within the sensitivity the noise is calibrated to."""
    h, w = 2 * data.draw(st.integers(1, 20)), 2 * data.draw(st.integers(1, 20))
    m = data.draw(st.integers(1, 12))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    spec = yuv_spec(mode, m_pixels=m, shape=(h, w))
    rel = Pixelizer(spec, backend="cpu").release(random_i420(rng, h, w))
    x = random_i420(rng, h, w)
    x2 = x.copy()
    y2, u2, v2 = planes(x2, h, w)
    flat = rng.choice(h * w, size=min(m, h * w), replace=False)
    ys, xs = np.unravel_index(flat, (h, w))
    for plane, (py, px_) in ((y2, (ys, xs)), (u2, (ys // 2, xs // 2)), (v2, (ys // 2, xs // 2))):
        plane[py, px_] = np.where(plane[py, px_] < 128, 255, 0)
    delta = exact_sums(x2, rel)[0] - exact_sums(x, rel)[0]
    assert np.abs(delta).sum() <= spec.sensitivity_l1 == 255 * m * 3


def test_yuv420_release_round_trips_as_format_version_2_and_rgb_stays_version_1(rng):
    rel = Pixelizer(yuv_spec("previous"), backend="cpu").release(random_i420(rng, 38, 54), camera_id="door")
    data = rel.to_bytes()
    assert data[4] == 2
    back = Release.from_bytes(data)
    assert back.color == "yuv420" and back.header == rel.header and np.array_equal(back.means, rel.means)
    rgb = Pixelizer(PixelizeSpec(eps_pix=1.0), backend="cpu").release(rng.integers(0, 256, (8, 8, 3), np.uint8))
    assert rgb.to_bytes()[4] == 1 and Release.from_bytes(rgb.to_bytes()).color == "rgb"
    assert (rel.header["format_version"], rgb.header["format_version"]) == (2, 1)  # what the bytes say


def test_yuv420_reconstructions_are_the_cell_colours(rng):
    h, w = 38, 54
    rel = Pixelizer(yuv_spec("fixed"), backend="cpu").release(random_i420(rng, h, w))
    yi, ui, vi = index_maps(rel)
    buf = rel.reconstruct_i420()
    he, we, sy, sc = kernels_cpu.i420_layout(h, w)
    y = buf[: sy * he].reshape(he, sy)[:, :we]
    u = buf[sy * he: sy * he + sc * (he // 2)].reshape(he // 2, sc)[:, : we // 2]
    assert np.array_equal(y, rel.means[yi]) and np.array_equal(u, rel.means[ui])
    rgb = rel.reconstruct()
    c, d, e = (rel.means[i].astype(np.int64) for i in (yi, yi + 1, yi + 2))
    red = np.clip((298 * (c - 16) + 409 * (e - 128) + 128) >> 8, 0, 255)
    blue = np.clip((298 * (c - 16) + 516 * (d - 128) + 128) >> 8, 0, 255)
    assert np.array_equal(rgb[..., 0], red) and np.array_equal(rgb[..., 2], blue)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"channels": 1}, "channels=3"),
    ({"cell_size": 5}, "even cell sizes"),
    ({"layout": "previous", "cell_sizes": (3, 6), "block_size": 12, "cell_size": 6}, "even cell sizes"),
    ({"color": "hsv"}, "unknown"),
])
def test_bad_yuv_specs_are_refused(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PixelizeSpec(eps_pix=1.0, **{"color": "yuv420", **kwargs})


@pytest.mark.parametrize("shape", [(38, 54, 3), (58, 54), (37, 54), (39, 53), (0, 4), (57, 53)])
def test_frames_that_are_not_i420_are_refused(shape):
    with pytest.raises(FrameError, match="I420"):
        Pixelizer(yuv_spec("fixed"), backend="cpu").release(np.zeros(shape, np.uint8))


def test_private_yuv_layout_scores_luma_only():
    spec = yuv_spec("private", m_pixels=3)
    assert spec.score_channels == 1 and spec.layout_sensitivity_l1 == 4 * 3 * 1 * spec.gradient_clip


def _hopper_rgb() -> np.ndarray:
    """Grace Hopper's portrait (shipped with matplotlib)."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def _rgb_mse(spec: PixelizeSpec, frame: np.ndarray, rgb: np.ndarray, frames: int = 4) -> float:
    px = Pixelizer(spec, backend="cpu")
    px.release(frame)
    px.release(frame)  # previous mode: past its starting layout
    return float(np.mean([np.mean((px.release(frame).reconstruct().astype(float) - rgb) ** 2)
                          for _ in range(frames)]))


@pytest.mark.parametrize(("eps_pix", "m_pixels"), [(4.0, 1), (1.0, 1), (1.0, 16)])
def test_previous_layout_on_i420_is_no_worse_than_the_best_fixed_size(eps_pix, m_pixels):
    """The adaptive rule prices the chroma means' noise (a quarter of the samples, seen through BT.601):
    costed like RGB noise, it chose cells too small and lost 1.5 to 2 dB to the best fixed size."""
    rgb = _hopper_rgb()
    i420 = rgb_to_i420(rgb)
    fixed = {b: _rgb_mse(PixelizeSpec(eps_pix=eps_pix, m_pixels=m_pixels, cell_size=b, color="yuv420"), i420, rgb)
             for b in (4, 8, 16, 32)}
    adaptive = _rgb_mse(PixelizeSpec(eps_pix=eps_pix, m_pixels=m_pixels, layout="previous", color="yuv420"), i420,
                        rgb)
    assert adaptive <= 1.1 * min(fixed.values()), (adaptive, fixed)


def test_rgb_to_i420_is_the_encoders_picture_of_a_flat_colour_and_refuses_odd_frames():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[...] = (200, 30, 90)
    i420 = rgb_to_i420(rgb)
    # the same integer BT.601 rule reconstruct_i420 applies to a cell's colour
    y = ((66 * 200 + 129 * 30 + 25 * 90 + 128) >> 8) + 16
    u = ((-38 * 200 - 74 * 30 + 112 * 90 + 128) >> 8) + 128
    v = ((112 * 200 - 94 * 30 - 18 * 90 + 128) >> 8) + 128
    assert i420.shape == (6, 6)
    assert (i420[:4] == y).all() and (i420[4:].reshape(4, 3)[:2] == u).all() and (i420[4:].reshape(4, 3)[2:] == v).all()
    # chroma: the rounded mean of each 2x2 block's per-pixel values
    rgb = np.random.default_rng(3).integers(0, 256, (2, 2, 3), dtype=np.uint8)
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    per_pixel_u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    assert rgb_to_i420(rgb)[2, 0] == (per_pixel_u.sum() + 2) >> 2
    with pytest.raises(FrameError, match="even"):
        rgb_to_i420(np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(FrameError, match="HxWx3 uint8"):
        rgb_to_i420(np.zeros((4, 4), np.uint8))
