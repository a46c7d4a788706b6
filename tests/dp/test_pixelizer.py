"""End-to-end behaviour of Pixelizer and Release (privacy.md §2, §3, §5, §6)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dp import ConfigError, FrameError, Pixelizer, PixelizeSpec, Release, ReleaseFormatError, kernels_cpu
from dp.baseline import dp_pix
from dp.noise import discrete_laplace_pmf

Z_1E4 = 3.891
MODES = ("fixed", "map", "previous", "private")


def spec_for(mode: str, *, m_pixels: int = 1, channels: int = 3, eps_pix: float = 1.0, shape=(37, 53)):
    kw: dict = {"cell_sizes": (2, 4, 8, 16), "block_size": 16}
    if mode == "fixed":
        kw = {"cell_size": 5}  # not a divisor of the frame: partial cells on two borders
    elif mode == "map":
        n_by, n_bx = -(-shape[0] // 16), -(-shape[1] // 16)
        kw["layout_map"] = [[(2, 4, 8, 16)[(i + j) % 4] for j in range(n_bx)] for i in range(n_by)]
    elif mode == "private":
        kw["eps_layout"] = 0.5
    return PixelizeSpec(eps_pix=eps_pix, m_pixels=m_pixels, channels=channels, layout=mode, **kw)


def cell_index_map(rel: Release) -> np.ndarray:
    """For each pixel and channel, the index of the mean it belongs to (from the public layout)."""
    idx = np.empty((rel.height, rel.width, rel.channels), dtype=np.int64)
    kernels_cpu.reconstruct(np.arange(rel.means.size, dtype=np.int64), rel.layout,
                            np.asarray(rel.cell_sizes, dtype=np.int64), rel.block_size, rel._offsets, idx)
    return idx


def exact_sums(frame: np.ndarray, index: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(index.ravel(), weights=frame.astype(np.int64).ravel(), minlength=n).astype(np.int64)


# --- sensitivity -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_changing_m_positions_moves_sums_by_at_most_255_m_c(mode, data):
    channels = data.draw(st.sampled_from([1, 3]))
    m = data.draw(st.integers(1, 12))
    h = data.draw(st.integers(1, 40))
    w = data.draw(st.integers(1, 40))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    spec = spec_for(mode, m_pixels=m, channels=channels, shape=(h, w))
    if mode == "map":
        n_by, n_bx = -(-h // 16), -(-w // 16)
        spec = spec.replace(layout_map=[[(2, 4, 8, 16)[(i * 3 + j) % 4] for j in range(n_bx)] for i in range(n_by)])
    px = Pixelizer(spec, backend="cpu")
    x = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    if mode == "previous":
        px.release(rng.integers(0, 256, (h, w, channels), dtype=np.uint8))  # gives a non-uniform layout
    rel = px.release(x)
    index = cell_index_map(rel)
    # a partition: every pixel-channel counted exactly once (no reflection padding)
    assert np.array_equal(np.sort(np.unique(index)), np.arange(rel.means.size))
    x2 = x.copy()
    flat = rng.choice(h * w, size=min(m, h * w), replace=False)
    ys, xs = np.unravel_index(flat, (h, w))
    x2[ys, xs] = np.where(x[ys, xs] < 128, 255, 0)  # extreme change at each position
    delta = exact_sums(x2, index, rel.means.size) - exact_sums(x, index, rel.means.size)
    assert np.abs(delta).sum() <= spec.sensitivity_l1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_private_layout_score_moves_by_at_most_4_m_c_g(data):
    channels = data.draw(st.sampled_from([1, 3]))
    m = data.draw(st.integers(1, 12))
    h, w = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    spec = spec_for("private", m_pixels=m, channels=channels)
    x = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    x2 = x.copy()
    flat = rng.choice(h * w, size=min(m, h * w), replace=False)
    ys, xs = np.unravel_index(flat, (h, w))
    x2[ys, xs] = rng.integers(0, 256, (len(flat), channels), dtype=np.uint8)
    n_blocks = (-(-h // 16)) * (-(-w // 16))
    scores = []
    for frame in (x, x2):
        out = np.empty(n_blocks, dtype=np.int64)
        kernels_cpu.noisy_complexity(frame, 16, spec.gradient_clip, np.zeros(n_blocks, dtype=np.int64),
                                     kernels_cpu.complexity_column_proto(16), out)
        scores.append(out)
    assert np.abs(scores[1] - scores[0]).sum() <= spec.layout_sensitivity_l1


@pytest.mark.parametrize(("shape", "block", "clip"), [((37, 53, 3), 16, 64), ((40, 70, 1), 32, 255),
                                                     ((300, 260, 3), 256, 300), ((5, 3, 3), 2, 1)])
def test_private_layout_score_is_the_clipped_neighbour_difference_sum(shape, block, clip, rng):
    """The vectorized score (uint8 differences, per-column counters, masked block borders) equals the
    definition of privacy.md section 3 computed block by block, with the uint32 counters for S > 128."""
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    frame[: shape[0] // 2] //= 8  # low-contrast rows: differences below the clip too
    n_by, n_bx = -(-shape[0] // block), -(-shape[1] // block)
    noise = rng.integers(-1000, 1000, n_by * n_bx)
    out = np.empty(n_by * n_bx, dtype=np.int64)
    kernels_cpu.noisy_complexity(frame, block, clip, noise, kernels_cpu.complexity_column_proto(block), out)
    want = []
    for by in range(n_by):
        for bx in range(n_bx):
            sub = frame[by * block:(by + 1) * block, bx * block:(bx + 1) * block].astype(np.int64)
            want.append(np.minimum(np.abs(np.diff(sub, axis=0)), clip).sum()
                        + np.minimum(np.abs(np.diff(sub, axis=1)), clip).sum())
    assert out.tolist() == (np.array(want) + noise).tolist()


# --- noise end to end ------------------------------------------------------------------------------
def expected_abs_error(level: int, n: int, scale: float) -> tuple[float, float]:
    """E and Var of |clip(round((level*n + Z)/n)) - level| for Z ~ DiscreteLaplace(scale), exactly."""
    z = np.arange(-int(60 * scale) - 60, int(60 * scale) + 61)
    p = discrete_laplace_pmf(z, scale)
    v = level * n + z
    mean = np.where(v <= 0, 0, np.minimum((2 * v + n) // (2 * n), 255))
    err = np.abs(mean - level)
    e = float((p * err).sum())
    return e, float((p * err * err).sum()) - e * e


@pytest.mark.parametrize("mode", MODES)
def test_flat_grey_frame_error_matches_the_noise_law(mode):
    spec = spec_for(mode, channels=1, shape=(120, 160))
    px = Pixelizer(spec, backend="cpu")
    frame = np.full((120, 160, 1), 128, dtype=np.uint8)
    if mode == "previous":
        px.release(frame)
    rel = px.release(frame)
    index = cell_index_map(rel)
    n_cell = np.bincount(index.ravel(), minlength=rel.means.size)
    scale = float(spec.noise_scale)
    moments = {n: expected_abs_error(128, int(n), scale) for n in np.unique(n_cell)}
    expected = sum(moments[n][0] for n in n_cell)
    sd = np.sqrt(sum(moments[n][1] for n in n_cell))
    observed = np.abs(rel.means.astype(np.int64) - 128).sum()
    assert abs(observed - expected) <= Z_1E4 * sd + 1e-9, (observed, expected, sd)


def test_two_releases_without_key_differ():
    spec = spec_for("fixed")
    px = Pixelizer(spec, backend="cpu")
    frame = np.full((37, 53, 3), 77, dtype=np.uint8)
    assert not np.array_equal(px.release(frame).means, px.release(frame).means)


def test_same_key_gives_same_release_and_frame_is_not_mutated(rng, key):
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    before = frame.copy()
    a = Pixelizer(spec_for("private"), backend="cpu").release(frame, key=key)
    b = Pixelizer(spec_for("private"), backend="cpu").release(frame, key=key)
    assert np.array_equal(a.means, b.means) and np.array_equal(a.layout, b.layout)
    assert np.array_equal(frame, before)


@pytest.mark.parametrize(("shape", "cell"), [((37, 53, 3), 5), ((600, 530, 1), 300), ((64, 64, 3), 16)])
def test_fixed_layout_equals_the_classical_dp_pix_baseline(shape, cell, rng, key):
    """Byte for byte, including cells above 257 px whose row sums need 32-bit counters."""
    frame = rng.integers(0 if cell < 257 else 240, 256, shape, dtype=np.uint8)  # bright: 300 rows overflow 16 bits
    spec = PixelizeSpec(eps_pix=1.0, m_pixels=1, channels=shape[2], cell_size=cell)
    assert np.array_equal(Pixelizer(spec, backend="cpu").release(frame, key=key).reconstruct(),
                          dp_pix(frame, spec, key=key))


# --- layouts ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fixed", "map", "previous"])
def test_layout_of_a_frame_does_not_depend_on_its_own_pixels(mode, rng, key):
    spec = spec_for(mode, shape=(64, 96))
    first = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    layouts = []
    for second in (np.zeros((64, 96, 3), np.uint8), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)):
        px = Pixelizer(spec, backend="cpu")
        px.release(first, key=key)
        layouts.append(px.release(second).layout)
    assert np.array_equal(layouts[0], layouts[1])


def _hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def _mse(spec: PixelizeSpec, img: np.ndarray, frames: int = 4) -> float:
    px = Pixelizer(spec, backend="cpu")
    px.release(img)
    px.release(img)  # previous mode: past its starting layout
    return float(np.mean([np.mean((px.release(img).reconstruct().astype(float) - img) ** 2) for _ in range(frames)]))


@pytest.mark.slow
def test_previous_layout_beats_every_fixed_size_with_a_generous_budget():
    img = _hopper()
    fixed = {b: _mse(PixelizeSpec(eps_pix=4.0, m_pixels=1, cell_size=b), img) for b in (4, 8, 16, 32)}
    adaptive = _mse(PixelizeSpec(eps_pix=4.0, m_pixels=1, layout="previous"), img)
    assert adaptive < min(fixed.values()), (adaptive, fixed)


@pytest.mark.slow
def test_previous_layout_is_no_worse_than_the_best_fixed_size_with_a_tight_budget():
    img = _hopper()
    fixed = {b: _mse(PixelizeSpec(eps_pix=1.0, m_pixels=16, cell_size=b), img) for b in (4, 8, 16, 32)}
    adaptive = _mse(PixelizeSpec(eps_pix=1.0, m_pixels=16, layout="previous"), img)
    assert adaptive <= 1.1 * min(fixed.values()), (adaptive, fixed)


def test_previous_mode_restarts_from_the_configured_size_after_a_resolution_change(rng):
    px = Pixelizer(PixelizeSpec(eps_pix=4.0, m_pixels=1, layout="previous", cell_size=8), backend="cpu")
    px.release(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    rel = px.release(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    assert set(rel.cell_size_map.ravel().tolist()) == {8}


def test_update_spec_applies_at_the_next_release(rng):
    px = Pixelizer(PixelizeSpec(eps_pix=1.0, cell_size=16), backend="cpu")
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert px.release(frame).means.size == 4 * 3
    px.update_spec(px.spec.replace(cell_size=8))
    assert px.release(frame).means.size == 16 * 3


# --- the release format ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_release_bytes_round_trip_exactly(mode, rng):
    spec = spec_for(mode)
    rel = Pixelizer(spec, backend="cpu").release(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),
                                                 camera_id="lobby-é", frame_index=41, timestamp_s=1.5)
    back = Release.from_bytes(rel.to_bytes())
    assert back.header == rel.header
    assert np.array_equal(back.means, rel.means) and np.array_equal(back.layout, rel.layout)
    assert np.array_equal(back.reconstruct(), rel.reconstruct())
    assert back.eps_spent == spec.eps_frame
    assert rel.header["camera_id"] == "lobby-é" and rel.header["frame_index"] == 41


@pytest.mark.parametrize("mode", ["previous", "fixed"])  # fixed: 5 px cells, odd sizes and offsets
@pytest.mark.parametrize("shape", [(37, 53), (40, 64), (1, 1), (33, 2)])
def test_i420_reconstruction_is_the_rgb_picture_in_bt601(mode, shape, rng):
    """reconstruct_i420 (for encoders) equals the BT.601 limited-range conversion of reconstruct(), at even
    size with the last row and column repeated, chroma from the top-left pixel of each 2x2 block, and
    zeroed row padding."""
    from dp.kernels_cpu import i420_layout

    h, w = shape
    px = Pixelizer(spec_for(mode, eps_pix=50.0, m_pixels=1), backend="cpu")
    px.release(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # a mixed layout for the next frame
    rel = px.release(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = rel.reconstruct_i420()
    he, we, sy, sc = i420_layout(h, w)
    assert buf.shape == (sy * he + 2 * sc * (he // 2),)
    rgb = np.pad(rel.reconstruct().astype(np.int64), ((0, he - h), (0, we - w), (0, 0)), mode="edge")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    want_y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    want_u = (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128)[::2, ::2]
    want_v = (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128)[::2, ::2]
    planes = buf[: sy * he].reshape(he, sy), buf[sy * he: sy * he + sc * (he // 2)].reshape(he // 2, sc), \
        buf[sy * he + sc * (he // 2):].reshape(he // 2, sc)
    for plane, want, cols in zip(planes, (want_y, want_u, want_v), (we, we // 2, we // 2), strict=True):
        assert np.array_equal(plane[:, :cols], want)
        assert not plane[:, cols:].any()


@pytest.mark.parametrize("shape", [(37, 53), (40, 64)])
def test_i420_reconstruction_into_a_given_buffer_writes_every_byte(shape, rng):
    """out= is an encoder's own (uninitialised) buffer: every byte, row padding included, must be written,
    or leftover memory would reach the encoder."""
    px = Pixelizer(spec_for("previous", eps_pix=50.0, m_pixels=1), backend="cpu")
    px.release(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    rel = px.release(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
    want = rel.reconstruct_i420()
    assert rel.i420_size == want.size
    for garbage in (0x00, 0xA5, 0xFF):
        out = np.full(rel.i420_size, garbage, dtype=np.uint8)
        assert rel.reconstruct_i420(out=out) is out
        assert np.array_equal(out, want)


def test_i420_reconstruction_refuses_a_buffer_it_cannot_fill(rng):
    rel = Pixelizer(PixelizeSpec(eps_pix=1.0, cell_size=8), backend="cpu").release(
        rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    read_only = np.zeros(rel.i420_size, np.uint8)
    read_only.flags.writeable = False
    for bad in (np.zeros(rel.i420_size - 1, np.uint8), np.zeros(rel.i420_size, np.int16), read_only,
                np.zeros(2 * rel.i420_size, np.uint8)[::2], bytearray(rel.i420_size)):
        with pytest.raises(ConfigError, match="out="):
            rel.reconstruct_i420(out=bad)


def test_i420_reconstruction_needs_rgb():
    rel = Pixelizer(PixelizeSpec(eps_pix=1.0, channels=1), backend="cpu").release(np.zeros((8, 8), np.uint8))
    with pytest.raises(ReleaseFormatError, match="RGB"):
        rel.reconstruct_i420()


def test_release_is_compact():
    rel = Pixelizer(PixelizeSpec(eps_pix=1.0, cell_size=16), backend="cpu").release(
        np.zeros((1080, 1920, 3), np.uint8))
    assert len(rel.to_bytes()) < 1080 * 1920 * 3 / 200


@pytest.mark.parametrize("cut", [0, 3, 10, 40, -5, -1])
def test_truncated_release_bytes_are_refused(cut, rng):
    data = Pixelizer(spec_for("private"), backend="cpu").release(
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).to_bytes()
    with pytest.raises(ReleaseFormatError):
        Release.from_bytes(data[:cut])


def test_foreign_and_corrupted_bytes_are_refused(rng):
    data = bytearray(Pixelizer(spec_for("fixed"), backend="cpu").release(
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).to_bytes())
    with pytest.raises(ReleaseFormatError, match="magic"):
        Release.from_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    data[30] ^= 0xFF
    with pytest.raises(ReleaseFormatError, match="checksum"):
        Release.from_bytes(bytes(data))


# --- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"eps_pix": 0}, "eps_pix"),
        ({"eps_pix": -1}, "eps_pix"),
        ({"eps_pix": float("nan")}, "eps_pix"),
        ({"eps_pix": float("inf")}, "eps_pix"),
        ({"eps_pix": 1, "m_pixels": 0}, "m_pixels"),
        ({"eps_pix": 1, "m_pixels": 2.5}, "m_pixels"),
        ({"eps_pix": 1, "channels": 2}, "channels"),
        ({"eps_pix": 1, "layout": "adaptive"}, "layout"),
        ({"eps_pix": 1, "layout": "previous", "cell_sizes": (4, 12)}, "divide"),
        ({"eps_pix": 1, "layout": "private"}, "eps_layout"),
        ({"eps_pix": 1, "eps_layout": 0.1}, "eps_layout"),
        ({"eps_pix": 1, "layout": "map"}, "layout_map"),
        ({"eps_pix": 1, "layout": "map", "layout_map": [[16, 5]]}, "layout_map"),
        ({"eps_pix": 1, "layout": "previous", "cell_size": 12}, "cell_size"),
        # noise the sampler cannot draw: refused here, not on every frame
        ({"eps_pix": 1e-12}, "too large for the sampler"),
        ({"eps_pix": 1, "layout": "private", "eps_layout": 1e-14}, "too large for the sampler"),
    ],
)
def test_bad_specs_are_refused_with_the_setting_named(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        PixelizeSpec(**kwargs)


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        (np.zeros((10, 10, 3), np.float32), "dtype"),
        (np.zeros((10, 10, 4), np.uint8), "channels"),
        (np.zeros((0, 10, 3), np.uint8), "at least"),
        (np.zeros((10,), np.uint8), "shape"),
        ([[1, 2]], "numpy"),
    ],
)
def test_bad_frames_are_refused(frame, fragment):
    with pytest.raises(FrameError, match=fragment):
        Pixelizer(PixelizeSpec(eps_pix=1.0), backend="cpu").release(frame)


def test_map_of_the_wrong_shape_is_refused_at_release():
    spec = PixelizeSpec(eps_pix=1.0, layout="map", layout_map=[[16, 16]])
    with pytest.raises(ConfigError, match="layout_map has shape"):
        Pixelizer(spec, backend="cpu").release(np.zeros((64, 64, 3), np.uint8))


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match="backend"):
        Pixelizer(PixelizeSpec(eps_pix=1.0), backend="tpu")


def test_grey_frames_may_be_two_dimensional():
    rel = Pixelizer(PixelizeSpec(eps_pix=1.0, channels=1), backend="cpu").release(np.zeros((20, 20), np.uint8))
    assert rel.reconstruct().shape == (20, 20, 1)


# --- releases whose checksum is right but whose settings no Pixelizer writes ---------------------------
def _crafted(*, camera_id=b"cam", index=0, ts=1.0, height=64, width=64, channels=3, mode=0, block=16,
             sizes=(16,), m=16, eps_layout=0.0, eps_pix=1.0, version=1, color=None, codes=None, means=None):
    """Release bytes in the documented layout (dp/release.py) with a correct CRC: what an attacker or a
    corrupted store could hand from_bytes."""
    import struct
    import zlib

    n_blocks = -(-height // block) * -(-width // block)
    body = b"DPSR" + struct.pack("<BH", version, len(camera_id)) + camera_id
    body += struct.pack("<QdIIBBH", index, ts, height, width, channels, mode, block)
    body += struct.pack(f"<B{len(sizes)}H", len(sizes), *sizes) + struct.pack("<Idd", m, eps_layout, eps_pix)
    if version == 2:
        body += bytes([1 if color is None else color])
    body += struct.pack("<I", n_blocks) + (bytes([1, 0]) if codes is None else bytes([0]) + bytes(codes))
    n_means = n_blocks * channels if means is None else means
    body += struct.pack("<I", n_means) + bytes(n_means)
    return body + struct.pack("<I", zlib.crc32(body))


def test_the_crafting_helper_writes_what_pixelizer_writes():
    rel = Release.from_bytes(_crafted())
    assert (rel.height, rel.width, rel.cell_sizes, rel.eps_pix) == (64, 64, (16,), 1.0)


@pytest.mark.parametrize("fields", [
    {"eps_pix": -1.0}, {"eps_pix": float("nan")}, {"eps_pix": float("-inf")}, {"eps_pix": 0.0},
    {"m": 0}, {"eps_layout": 5.0},  # a fixed layout spends no eps_layout
    {"mode": 3, "block": 32, "sizes": (16, 32)},  # private without eps_layout
    {"sizes": (0,)}, {"block": 16, "sizes": (8, 16)},  # fixed: one size, equal to the block
    {"mode": 2, "block": 8, "sizes": (3, 8)},  # 3 does not divide 8
    {"mode": 2, "block": 32, "sizes": (32, 16)}, {"mode": 2, "block": 32, "sizes": (16, 16)},
    {"version": 2, "color": 0},  # RGB is version 1
    {"version": 2, "height": 63},  # yuv420 needs even sides
    {"height": 1, "width": 2**32 - 1, "block": 1, "sizes": (1,), "means": 0},  # would allocate gigabytes
    {"height": 40000, "width": 40000, "block": 2, "sizes": (2,), "means": 0},
    {"height": 30000, "width": 30000, "block": 1, "sizes": (1,), "means": 0},  # 900 M blocks in 60 bytes
    {"ts": float("nan")},
])
def test_releases_with_impossible_settings_are_refused_even_with_a_good_checksum(fields):
    with pytest.raises(ReleaseFormatError):
        Release.from_bytes(_crafted(**fields))


def test_a_uniform_layout_written_code_by_code_is_refused_so_each_release_has_one_byte_string():
    previous = {"mode": 2, "block": 32, "sizes": (16, 32)}
    mixed = Release.from_bytes(_crafted(**previous, codes=[0, 1, 1, 1], means=(4 + 1 + 1 + 1) * 3))
    assert mixed.layout.tolist() == [[0, 1], [1, 1]]  # the raw encoding itself is fine
    one_code = _crafted(**previous, codes=None, means=4 * 4 * 3)  # one code: 16 px cells in all four blocks
    assert Release.from_bytes(one_code).to_bytes() == one_code
    with pytest.raises(ReleaseFormatError, match="uniform layout"):
        Release.from_bytes(_crafted(**previous, codes=[1, 1, 1, 1]))


def test_the_running_frame_index_stops_at_the_formats_limit(rng):
    px = Pixelizer(spec_for("fixed"), backend="cpu")
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    last = px.release(frame, frame_index=2**64 - 1, key=bytes(32))
    assert Release.from_bytes(last.to_bytes()).frame_index == 2**64 - 1
    with pytest.raises(ConfigError, match="frame_index"):
        px.release(frame)
    assert px.release(frame, frame_index=7).frame_index == 7  # a caller's index still works


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"frame_index": -1}, "frame_index"), ({"frame_index": 2**64}, "frame_index"),
    ({"frame_index": True}, "frame_index"), ({"frame_index": 1.7}, "frame_index"),
    ({"camera_id": "\ud800"}, "camera_id"), ({"camera_id": "x" * 70000}, "camera_id"), ({"camera_id": 5}, "camera_id"),
    ({"timestamp_s": float("nan")}, "timestamp_s"), ({"timestamp_s": "abc"}, "timestamp_s"),
])
def test_header_fields_a_release_cannot_hold_are_refused_before_any_noise(kwargs, fragment, rng):
    px = Pixelizer(spec_for("previous"), backend="cpu")
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    first = px.release(frame, key=bytes(32))
    with pytest.raises(ConfigError, match=fragment):
        px.release(frame, **kwargs)
    # the refused call changed nothing: the next release follows the first one's layout, as without it
    again = Pixelizer(spec_for("previous"), backend="cpu")
    again.release(frame, key=bytes(32))
    assert np.array_equal(px.release(frame, key=bytes(range(32))).layout, again.release(frame, key=bytes(range(32))).layout)
    assert first.to_bytes()


@pytest.mark.parametrize("kwargs", [
    {"detail_gain": None}, {"detail_gain": [1]}, {"detail_gain": "0.5"}, {"eps_pix": 10**400}, {"eps_pix": True},
    {"eps_pix": "1.0"}, {"channels": 3.0}, {"channels": np.array([3])}, {"layout": np.array("fixed")},
    {"layout": "previous", "cell_sizes": (float("inf"), 16)}, {"layout": "previous", "cell_sizes": (4.7, 8, 16, 32)},
    {"layout": "previous", "cell_sizes": "48"}, {"layout": "previous", "cell_sizes": (True, 8, 16, 32)},
])
def test_specs_of_the_wrong_types_are_config_errors_not_guesses(kwargs):
    kwargs = {"eps_pix": 1.0, **kwargs}
    with pytest.raises(ConfigError):
        PixelizeSpec(**kwargs)
