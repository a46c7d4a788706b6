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
    assert out.returncode == 2 and "does not exist" in out.stderr.replace("\n", " ") and "o.png" in out.stderr


# --- what an audit of the command found --------------------------------------------------------------
def test_a_cameras_credentials_and_tokens_never_reach_the_stats_file(tmp_path):
    from streams.testing import ServerProcess, free_port

    server = ServerProcess(free_port(), "--width", "64", "--height", "48", "--fps", "15")
    url = server.start()  # rtsp://127.0.0.1:PORT/cam
    try:
        stats = tmp_path / "q.dps"
        run("pixelize", f"{url}?token=T0kenSECRET&fmt=.png", str(tmp_path / "q.mp4"), "--frames", "3",
            "--stats", str(stats))
        assert b"T0kenSECRET" not in stats.read_bytes()
        assert {r.camera_id for r in read_releases(stats)} == {"cam"}
    finally:
        server.stop()


@pytest.mark.parametrize(("source", "camera_id"), [
    ("rtsp://admin:R00tPassw0rd@127.0.0.1:8557", "127.0.0.1"),
    ("rtsp://admin:pw@cam.local/Streaming/Channels/101?token=abc", "101"),
    ("rtsps://u:p@10.0.0.5:322/live/main", "main"),
    ("test:smpte?fps=240", "smpte"),
    ("/videos/front door.mp4", "front-door"),
])
def test_camera_ids_come_from_the_path_never_the_credentials(source, camera_id):
    from service.cli_pixelize import _camera_id

    assert _camera_id(source) == camera_id


def test_an_rtsp_url_ending_like_an_image_is_a_camera_and_its_password_stays_hidden(tmp_path):
    from streams.testing import free_port

    url = f"rtsp://admin:S3cr3tPw@127.0.0.1:{free_port()}/snapshot.jpg"
    out = run("pixelize", url, str(tmp_path / "o.jpg"), check=False)
    assert out.returncode == 2 and "S3cr3tPw" not in out.stderr and "cannot read image" not in out.stderr


def test_input_output_and_stats_may_not_be_the_same_file(tmp_path, clip):
    import shutil

    same = tmp_path / "same.mp4"
    shutil.copy(clip, same)
    before = same.read_bytes()
    for args in ([str(same), str(same)], [str(same), str(tmp_path / "o.mp4"), "--stats", str(same)],
                 [clip, str(tmp_path / "x.mp4"), "--stats", str(tmp_path / "x.mp4")]):
        out = run("pixelize", *args, check=False)
        assert out.returncode == 2 and "the same file" in out.stderr
    assert same.read_bytes() == before and not (tmp_path / "x.mp4").exists()


def test_sixteen_bit_and_rotated_images_are_read_as_a_viewer_shows_them(tmp_path):
    ramp = np.tile((np.arange(256, dtype=np.uint32) * 257).astype(np.uint16), (8, 1))  # 0..65535 across
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    run("pixelize", str(tmp_path / "ramp16.png"), str(tmp_path / "r.png"), "--gray", "--layout", "fixed",
        "--cell-size", "32", "--eps-pix", "1000", "--m-pixels", "1")
    row = np.asarray(Image.open(tmp_path / "r.png"))[0, ::32].astype(int)
    assert np.all(np.abs(row - (np.arange(8) * 32 + 15.5)) <= 3), row  # cell means of 0..255, not white
    stored = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide as stored, shown 20 wide
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    stored.save(tmp_path / "exif6.jpg", exif=exif)
    run("pixelize", str(tmp_path / "exif6.jpg"), str(tmp_path / "e.png"))
    assert Image.open(tmp_path / "e.png").size == (20, 40)


def test_bad_output_places_and_options_are_one_line_errors(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    (tmp_path / "adir").mkdir()
    for args, says in (([str(tmp_path / "nodir" / "o.png")], "does not exist"),
                       ([str(tmp_path / "adir")], "is a directory"),
                       ([str(tmp_path / "o.png"), "--stats", str(tmp_path / "nodir" / "s.dps")], "does not exist"),
                       ([str(tmp_path / "o.pgm")], "grey images"),
                       ([str(tmp_path / "o.png"), "--layout", "previous", "--cell-sizes", "4,8,x"], "--cell-sizes")):
        out = run("pixelize", str(src), *args, check=False)
        assert out.returncode == 2 and says in out.stderr.replace("\n", " ") and "Traceback" not in out.stderr
    out = run("pixelize", "test:ball", str(tmp_path / "t.mp4"), check=False)
    assert out.returncode == 2 and "--frames or --duration" in out.stderr.replace("\n", " ")


def test_a_240_fps_source_is_written_at_240_fps(tmp_path):
    run("pixelize", "test:smpte?fps=240&width=64&height=48", str(tmp_path / "t.mp4"), "--frames", "5")
    from streams.files import iter_frames

    pts = [f.pts_s for f in iter_frames(str(tmp_path / "t.mp4"))]
    assert len(pts) == 5 and pts[-1] - pts[0] == pytest.approx(4 / 240, abs=1e-3)


def test_sigterm_finishes_a_playable_video(tmp_path):
    import signal
    import time

    out_path, stats = tmp_path / "term.mp4", tmp_path / "term.dps"
    proc = subprocess.Popen([DPSTREAM, "pixelize", "test:smpte?width=160&height=120", str(out_path), "--duration",
                             "600", "--stats", str(stats)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not stats.exists() or stats.stat().st_size < 20_000):
            time.sleep(0.1)  # releases are being written: the pipeline runs
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    finally:
        proc.kill()
    from streams.files import iter_frames

    frames = sum(1 for _ in iter_frames(str(out_path)))
    assert frames > 0 and frames <= len(list(read_releases(stats)))


def test_a_camera_that_dies_early_is_a_warning_and_exit_status_1(tmp_path):
    import time

    from streams.testing import ServerProcess, free_port

    server = ServerProcess(free_port(), "--width", "64", "--height", "48", "--fps", "15")
    url = server.start()
    stats = tmp_path / "k.dps"
    proc = subprocess.Popen([DPSTREAM, "pixelize", url, str(tmp_path / "k.mp4"), "--duration", "60", "--stats",
                             str(stats)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not stats.exists() or stats.stat().st_size < 2_000):
            time.sleep(0.1)
        server.kill()  # the camera crashes
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.stop()
    assert proc.returncode == 1, err
    assert "ended the stream" in err.replace("\n", " ") and "--duration 60" in err.replace("\n", " ")


def test_an_animated_gif_is_refused_at_once_and_a_corrupt_release_is_named(tmp_path, clip):
    frames = [Image.new("RGB", (32, 32), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    out = run("pixelize", str(tmp_path / "anim.gif"), str(tmp_path / "o.png"), check=False)
    assert out.returncode == 2 and "animated (3 frames)" in out.stderr  # it stalled 10 s as a video before
    stats = tmp_path / "v.dps"
    run("pixelize", clip, str(tmp_path / "v.mp4"), "--stats", str(stats), "--frames", "3")
    data = stats.read_bytes()
    stats.write_bytes(data[:-3] + bytes(3))  # the last release's checksum no longer matches
    out = run("stats", "show", str(stats), check=False)
    assert out.returncode == 2 and "release 2 (at byte" in out.stderr and "checksum mismatch" in out.stderr
