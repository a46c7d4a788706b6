"""RGB releases of a decoder's I420 frames: `Pixelizer.release(frame, i420=colorimetry)` releases the RGB
picture of the frame (dp.color.i420_to_rgb): the same bytes as releasing that picture."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from dp import ConfigError, FrameError, Pixelizer, PixelizeSpec
from dp.color import YUV_MATRICES, i420_to_rgb, yuv_to_rgb_coefficients

SPECS = {
    "fixed-5": PixelizeSpec(eps_pix=2.0, m_pixels=1, cell_size=5),  # odd cells: pairs of chroma split
    "fixed-16": PixelizeSpec(eps_pix=2.0, m_pixels=1, cell_size=16),
    "map": PixelizeSpec(eps_pix=2.0, m_pixels=1, layout="map", block_size=16, cell_sizes=(2, 4, 8, 16),
                        layout_map=[[(2, 4, 8, 16)[(i + j) % 4] for j in range(4)] for i in range(3)]),
    "previous": PixelizeSpec(eps_pix=50.0, m_pixels=1, layout="previous", block_size=16, cell_sizes=(2, 4, 8, 16)),
    "private": PixelizeSpec(eps_pix=2.0, m_pixels=1, layout="private", eps_layout=0.5),
}


@pytest.mark.parametrize("colorimetry", ["bt709", "bt601-full", "bt2020"])
@pytest.mark.parametrize("name", list(SPECS))
def test_release_of_an_i420_frame_is_the_release_of_its_rgb_picture(name, colorimetry, rng):
    """Even cell sizes go through the kernel that sums the picture as it converts it (fixed-16, map,
    previous); odd ones and the private layout convert first. Both must give the picture's release."""
    spec = SPECS[name]
    h, w = (38, 54) if name != "map" else (40, 64)  # partial blocks and cells on two borders
    fused, plain = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cpu")
    for index in range(3):  # previous: the second and third frames take their layout from a release
        frame = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
        if index == 2:  # decoded frames arrive read-only (bytes copied out of GStreamer)
            frame = np.frombuffer(frame.tobytes(), dtype=np.uint8).reshape(frame.shape)
        key = secrets.token_bytes(32)
        a = fused.release(frame, key=key, frame_index=index, timestamp_s=1.0, i420=colorimetry)
        b = plain.release(i420_to_rgb(frame, colorimetry), key=key, frame_index=index, timestamp_s=1.0)
        assert a.to_bytes() == b.to_bytes()
        assert a.color == "rgb" and (a.height, a.width, a.channels) == (h, w, 3)


def _integer_rule(frame: np.ndarray, colorimetry: str) -> np.ndarray:
    """yuv_to_rgb_coefficients' rule in plain int64 numpy, as its docstring states it."""
    h, w = frame.shape[0] * 2 // 3, frame.shape[1]
    y_offset, cy, cr_r, cb_g, cr_g, cb_b = yuv_to_rgb_coefficients(colorimetry).astype(np.int64)
    c = cy * (frame[:h].astype(np.int64) - y_offset)
    chroma = frame[h:].reshape(h, w // 2).astype(np.int64) - 128
    d = chroma[: h // 2].repeat(2, 0).repeat(2, 1)
    e = chroma[h // 2:].repeat(2, 0).repeat(2, 1)
    want = np.stack([c + cr_r * e + 128, c - cb_g * d - cr_g * e + 128, c + cb_b * d + 128], axis=-1) >> 8
    return np.clip(want, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("colorimetry", ["bt709", "bt601", "bt2020-full"])
def test_i420_to_rgb_is_the_integer_rule_exactly(colorimetry, rng):
    h, w = 10, 14
    frame = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    frame[0, :4] = (0, 255, 16, 235)  # both ends of both ranges
    assert np.array_equal(i420_to_rgb(frame, colorimetry), _integer_rule(frame, colorimetry))


def _every_luma_under_extreme_chroma() -> np.ndarray:
    """An I420 frame in which each of 49 chroma samples (U, V each at and next to both ends and the middle)
    covers all 256 luma values: chroma row k is sample k 64 times, and its 2x2 blocks hold 4j .. 4j + 3."""
    levels = np.array([0, 1, 127, 128, 129, 254, 255], dtype=np.uint8)
    u, v = (g.ravel() for g in np.meshgrid(levels, levels, indexing="ij"))
    n = u.size
    luma = np.arange(256).reshape(64, 2, 2).transpose(1, 0, 2).reshape(2, 128).astype(np.uint8)
    chroma = np.concatenate([np.repeat(u, 64).reshape(n, 64), np.repeat(v, 64).reshape(n, 64)])  # U rows, V rows
    return np.concatenate([np.tile(luma, (n, 1)), chroma.reshape(n, 128)])


@pytest.mark.parametrize("colorimetry", [m + r for m in YUV_MATRICES for r in ("", "-full")])
def test_the_rule_at_the_ends_of_its_int16_range(colorimetry):
    """The kernels evaluate the rule in int16 lanes (kernels_cpu: Y + q + ((a Y + r) >> 8) with cy = 256 + a):
    every luma value under the most extreme chroma, for the picture and for the fused cell sums, with
    counters of uint16 (cells up to 128 px) and of int32 (larger cells)."""
    cy = int(yuv_to_rgb_coefficients(colorimetry)[1])
    assert 256 <= cy < 384, "the int16 evaluation needs 0 <= cy - 256 < 128"
    frame = _every_luma_under_extreme_chroma()
    assert frame.shape == (147, 128)
    assert np.array_equal(i420_to_rgb(frame, colorimetry), _integer_rule(frame, colorimetry))
    for cell in (2, 128, 130):
        spec = PixelizeSpec(eps_pix=4.0, m_pixels=1, cell_size=cell)
        key = secrets.token_bytes(32)
        a = Pixelizer(spec, backend="cpu").release(frame, key=key, frame_index=0, timestamp_s=1.0, i420=colorimetry)
        b = Pixelizer(spec, backend="cpu").release(i420_to_rgb(frame, colorimetry), key=key, frame_index=0,
                                                   timestamp_s=1.0)
        assert a.to_bytes() == b.to_bytes(), cell


@pytest.mark.parametrize("cell", [128, 130])
def test_the_fused_counters_hold_a_white_cell(cell):
    """510 per pixel pair over 128 rows is 65280, the most the fused kernel's uint16 counters hold; 130 rows
    need its int32 ones."""
    frame = np.zeros((390, 260), dtype=np.uint8)
    frame[:260] = 255
    frame[260:] = 128  # full-range white: every channel 255
    spec = PixelizeSpec(eps_pix=1e4, m_pixels=1, cell_size=cell)  # noise far below a level
    key = secrets.token_bytes(32)
    rel = Pixelizer(spec, backend="cpu").release(frame, key=key, frame_index=0, timestamp_s=1.0, i420="bt709-full")
    assert np.all(rel.means == 255)
    plain = Pixelizer(spec, backend="cpu").release(i420_to_rgb(frame, "bt709-full"), key=key, frame_index=0,
                                                   timestamp_s=1.0)
    assert rel.to_bytes() == plain.to_bytes()


# published BT.601 and BT.709 video-range conversion factors (Y scale; V to R; U to G; V to G; U to B)
PUBLISHED = {"bt601": (1.164, 1.596, 0.392, 0.813, 2.017), "bt709": (1.164, 1.793, 0.213, 0.533, 2.112)}


@pytest.mark.parametrize("matrix", list(PUBLISHED))
def test_the_integer_rule_is_the_published_matrix(matrix):
    coef = yuv_to_rgb_coefficients(matrix)
    assert coef[0] == 16
    assert np.allclose(coef[1:] / 256.0, PUBLISHED[matrix], atol=0.003)
    # video-range BT.601 is the rule Release.reconstruct shows yuv420 releases with
    if matrix == "bt601":
        assert coef[1:].tolist() == [298, 409, 100, 208, 516]


@pytest.mark.parametrize("colorimetry", [m + r for m in YUV_MATRICES for r in ("", "-full")])
def test_i420_to_rgb_is_the_exact_conversion_to_within_rounding(colorimetry, rng):
    h, w = 6, 10
    frame = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
    kr, kb = YUV_MATRICES[colorimetry.split("-")[0]]
    kg = 1 - kr - kb
    full = colorimetry.endswith("-full")
    y = frame[:h].astype(float) - (0 if full else 16)
    chroma = frame[h:].reshape(h, w // 2).astype(float) - 128
    u = chroma[: h // 2].repeat(2, 0).repeat(2, 1)
    v = chroma[h // 2:].repeat(2, 0).repeat(2, 1)
    ys, cs = (1.0, 1.0) if full else (255 / 219, 255 / 224)
    exact = np.stack([ys * y + 2 * (1 - kr) * cs * v,
                      ys * y - 2 * (1 - kb) * kb / kg * cs * u - 2 * (1 - kr) * kr / kg * cs * v,
                      ys * y + 2 * (1 - kb) * cs * u], axis=-1)
    got = i420_to_rgb(frame, colorimetry).astype(float)
    # 8 fractional bits: within 1.5 levels of the exact value before clipping, for any input
    assert np.all(np.abs(got - np.clip(exact, 0, 255)) <= 1.5)


def test_bad_i420_requests_are_refused(rng):
    frame = rng.integers(0, 256, (12, 8), dtype=np.uint8)
    with pytest.raises(ConfigError, match="colorimetry 'bt999' is unknown"):
        Pixelizer(PixelizeSpec(eps_pix=1.0), backend="cpu").release(frame, i420="bt999")
    with pytest.raises(ConfigError, match="I420 frames as they are"):
        Pixelizer(PixelizeSpec(eps_pix=1.0, cell_size=4, color="yuv420"), backend="cpu").release(frame, i420="bt709")
    with pytest.raises(ConfigError, match="channels=1"):
        Pixelizer(PixelizeSpec(eps_pix=1.0, channels=1), backend="cpu").release(frame, i420="bt709")
    with pytest.raises(FrameError, match="I420 frame"):
        Pixelizer(PixelizeSpec(eps_pix=1.0), backend="cpu").release(frame[:11], i420="bt709")
    with pytest.raises(FrameError, match="I420 frame"):
        i420_to_rgb(np.zeros((4, 4, 3), np.uint8), "bt709")


def test_the_fused_release_matches_on_random_shapes_and_even_cells(rng):
    """Frames of any even size (down to 2x2) and any even cell sizes: partial cells on both borders, runs of
    blocks with one cell size, cells as large as the frame."""
    for _ in range(40):
        h, w = (2 * int(v) for v in rng.integers(1, 70, 2))
        if rng.random() < 0.5:
            spec = PixelizeSpec(eps_pix=4.0, m_pixels=1, cell_size=2 * int(rng.integers(1, 40)))
        else:
            block = int(rng.choice([8, 16, 32, 64]))
            sizes = tuple(sorted({int(s) for s in rng.choice([s for s in (2, 4, 8, 16, 32, 64) if block % s == 0],
                                                              size=3)}))
            spec = PixelizeSpec(eps_pix=float(rng.choice([2.0, 200.0])), m_pixels=1, layout="previous",
                                block_size=block, cell_sizes=sizes, cell_size=sizes[-1])
        fused, plain = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cpu")
        colorimetry = str(rng.choice(["bt709", "bt601", "bt2020-full"]))
        for index in range(2):
            frame = rng.integers(0, 256, (h * 3 // 2, w), dtype=np.uint8)
            key = secrets.token_bytes(32)
            a = fused.release(frame, key=key, frame_index=index, timestamp_s=1.0, i420=colorimetry)
            b = plain.release(i420_to_rgb(frame, colorimetry), key=key, frame_index=index, timestamp_s=1.0)
            assert a.to_bytes() == b.to_bytes(), (h, w, spec)
