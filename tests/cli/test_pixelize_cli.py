"""`dpstream pixelize` and `dpstream stats` end to end: real files, real GStreamer, the installed CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dp import Release
from service.statsfile import read_releases

DPSTREAM = os.path.join(os.path.dirname(sys.executable), "dpstream")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([DPSTREAM, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    from streams.files import make_test_clip

    path = tmp_path_factory.mktemp("clip") / "in.mp4"
    return make_test_clip(str(path), 96, 64, 12, 10, pattern="smpte")


def test_image_is_privatized_with_its_release_written(tmp_path):
    src = tmp_path / "in.png"
    rng = np.random.default_rng()
    Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(src)
    run("pixelize", str(src), str(tmp_path / "out.png"), "--layout", "fixed", "--cell-size", "8",
        "--stats", str(tmp_path / "s.dps"))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    assert out.shape == (45, 70, 3)
    (rel,) = list(read_releases(tmp_path / "s.dps"))
    assert np.array_equal(rel.reconstruct(), out)  # the image is exactly the stored release
    assert rel.header["layout_mode"] == "fixed" and rel.cell_sizes == (8,)


def test_video_is_privatized_frame_by_frame_with_every_release_stored(tmp_path, clip):
    out = tmp_path / "out.mp4"
    stats = tmp_path / "v.dps"
    result = run("pixelize", clip, str(out), "--stats", str(stats), "--eps-pix", "2", "--m-pixels", "4")
    assert "12 releases" in result.stderr.replace("\n", " ")
    releases = list(read_releases(stats))
    assert [r.frame_index for r in releases] == list(range(12))
    assert all(r.eps_spent == 2.0 and (r.height, r.width) == (64, 96) for r in releases)
    from streams.files import iter_frames

    frames = list(iter_frames(str(out)))
    assert len(frames) == 12 and frames[0].array.shape == (64, 96, 3)
    summary = json.loads(run("stats", "show", str(stats), "--json").stdout)
    assert summary["n_releases"] == 12 and summary["eps_total"] == 24.0
    run("stats", "render", str(stats), str(tmp_path / "last.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "last.png")), releases[-1].reconstruct())


def test_yuv_video_is_released_from_the_decoders_planes(tmp_path, clip):
    """--yuv: I420 in, YUV releases stored, and the encoded video shows the releases' colours."""
    out, stats = tmp_path / "out.mp4", tmp_path / "y.dps"
    run("pixelize", clip, str(out), "--yuv", "--layout", "fixed", "--cell-size", "8", "--eps-pix", "500",
        "--m-pixels", "1", "--stats", str(stats))
    releases = list(read_releases(stats))
    assert len(releases) == 12 and all(r.color == "yuv420" for r in releases)
    from streams.files import iter_frames

    frames = list(iter_frames(str(out)))
    assert len(frames) == 12
    diff = np.abs(frames[-1].array.astype(int) - releases[-1].reconstruct().astype(int))
    assert np.median(diff) <= 6  # H.264 at quantizer 23 and the colour matrix round trip, nothing more
    assert "--gray" in run("pixelize", clip, str(out), "--yuv", "--gray", check=False).stderr
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    assert "video and RTSP" in run("pixelize", str(img), str(tmp_path / "o.png"), "--yuv", check=False).stderr


def test_budget_window_repeats_releases_instead_of_overspending(tmp_path, clip):
    # 10 fps clip, eps 1 per frame, at most 3 per 1 s window: 3 fresh releases in the first second
    stats = tmp_path / "v.dps"
    run("pixelize", clip, str(tmp_path / "out.mp4"), "--stats", str(stats), "--eps-pix", "1",
        "--eps-window", "3", "--window-s", "1")
    times = [r.timestamp_s for r in read_releases(stats)]
    assert 3 <= len(times) < 12
    for t in times:
        assert sum(1 for s in times if t <= s <= t + 1.0) <= 3


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--eps-pix", "0"], "eps_pix"),
        (["--m-pixels", "0"], "m_pixels"),
        (["--layout", "private"], "eps_layout"),
        (["--layout", "previous", "--cell-sizes", "4,12"], "divide"),
    ],
)
def test_bad_settings_fail_with_a_message_naming_them(tmp_path, args, fragment):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    out = run("pixelize", str(src), str(tmp_path / "o.png"), *args, check=False)
    assert out.returncode == 2 and fragment in out.stderr
    assert not (tmp_path / "o.png").exists()


def test_unreadable_and_foreign_inputs_fail_cleanly(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = run("pixelize", str(bad), str(tmp_path / "o.png"), check=False)
    assert out.returncode == 2 and "cannot read image" in out.stderr
    foreign = tmp_path / "x.dps"
    foreign.write_bytes(b"GIF89a" + bytes(50))
    out = run("stats", "show", str(foreign), check=False)
    assert out.returncode == 2 and "not a dpstream stats file" in out.stderr
    missing = run("pixelize", str(tmp_path / "nope.mp4"), str(tmp_path / "o.mp4"), check=False)
    assert missing.returncode == 2


def test_a_single_release_file_is_readable_as_stats(tmp_path):
    from dp import Pixelizer, PixelizeSpec

    rel = Pixelizer(PixelizeSpec(eps_pix=1.0), backend="cpu").release(np.zeros((16, 16, 3), np.uint8))
    (tmp_path / "one.dpsr").write_bytes(rel.to_bytes())
    (back,) = list(read_releases(tmp_path / "one.dpsr"))
    assert isinstance(back, Release) and np.array_equal(back.means, rel.means)


def test_stats_commands_refuse_bad_files_and_options_in_one_line(tmp_path):
    from dp import Pixelizer, PixelizeSpec

    stub = tmp_path / "stub.dps"
    stub.write_bytes(b"DPSS")  # the magic, then nothing
    for command in (["show", str(stub)], ["render", str(stub), str(tmp_path / "o.png")]):
        out = run("stats", *command, check=False)
        assert out.returncode == 2 and "truncated in its header" in out.stderr and "Traceback" not in out.stderr
    one = tmp_path / "one.dpsr"
    one.write_bytes(Pixelizer(PixelizeSpec(eps_pix=1.0), backend="cpu").release(np.zeros((16, 16, 3), np.uint8)).to_bytes())
    for fps in ("nan", "inf", "0"):
        out = run("stats", "render", str(one), str(tmp_path / "o.mp4"), "--fps", fps, check=False)
        assert out.returncode == 2 and "--fps" in out.stderr and "Traceback" not in out.stderr
    out = run("stats", "render", str(one), str(tmp_path / "missing" / "o.png"), check=False)
    assert out.returncode == 2 and "cannot write" in out.stderr and "o.png" in out.stderr
