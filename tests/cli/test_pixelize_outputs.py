"""`dpstream pixelize` and `stats render` replace their outputs only with complete files: an existing output
survives a run that fails or is killed, and no temporary file is left after a run that ends on its own."""

from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.statsfile import read_releases

DPSTREAM = os.path.join(os.path.dirname(sys.executable), "dpstream")
PATTERN = "test:smpte?width=64&height=48"  # endless, cheap: frames as fast as the release loop takes them


def run(*args: str, umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([DPSTREAM, *args], capture_output=True, text=True, timeout=300, umask=umask)


def part_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def complete_releases(stats: Path) -> int:
    """Releases wholly written to a stats file that a running `pixelize` is still appending to."""
    data = stats.read_bytes() if stats.exists() else b""
    count, offset = 0, 5  # b"DPSS" + version
    while offset + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, offset)
        if offset + 4 + n > len(data):
            break
        count, offset = count + 1, offset + 4 + n
    return count


def start_until_releasing(output: Path, stats: Path, releases: int = 4) -> subprocess.Popen:
    """A `pixelize` of an endless test pattern, returned once `releases` releases are in its stats file: the
    video writer is open by then (it starts at the second frame)."""
    proc = subprocess.Popen([DPSTREAM, "pixelize", PATTERN, str(output), "--duration", "600", "--stats", str(stats)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while complete_releases(stats) < releases:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"pixelize made no {releases} releases: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)  # polling a condition, not waiting for luck
    return proc


def frame_count(video: Path) -> int:
    from streams.files import iter_frames

    return sum(1 for _ in iter_frames(str(video)))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    from streams.files import make_test_clip

    return make_test_clip(str(tmp_path_factory.mktemp("clip") / "in.mp4"), 96, 64, 6, 10, pattern="smpte")


def fill(disk: Path) -> None:
    """Take every free block of `disk` (a file's blocks truncated in place would be free again)."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_killed_run_leaves_the_previous_video_as_it_was_and_its_part_file_beside_it(tmp_path, clip):
    out, stats = tmp_path / "out.mp4", tmp_path / "s.dps"
    before = Path(clip).read_bytes()
    out.write_bytes(before)
    proc = start_until_releasing(out, stats)
    proc.kill()  # SIGKILL: nothing is finished, nothing cleaned up
    proc.communicate(timeout=30)
    assert out.read_bytes() == before and frame_count(out) == 6  # still the previous, playable video
    (part,) = part_files(tmp_path)
    assert part.startswith(".out.mp4.")
    assert complete_releases(stats) >= 4  # the log of releases is kept as it was written


def test_sigterm_replaces_the_output_once_the_video_is_finished_and_leaves_no_part_file(tmp_path, clip):
    out, stats = tmp_path / "out.mp4", tmp_path / "s.dps"
    before = Path(clip).read_bytes()
    out.write_bytes(before)
    proc = start_until_releasing(out, stats)
    try:
        running_out, running_parts = out.read_bytes(), part_files(tmp_path)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert running_out == before and len(running_parts) == 1  # untouched while the run was writing
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert part_files(tmp_path) == []
    from streams.files import iter_frames

    frames = [f.array.shape for f in iter_frames(str(out))]
    assert 4 <= len(frames) <= len(list(read_releases(stats))) and set(frames) == {(48, 64, 3)}


def test_a_finished_video_is_a_new_file_in_place_of_the_old_one(tmp_path, clip):
    out = tmp_path / "out.mp4"
    assert run("pixelize", clip, str(out), "--frames", "2", umask=0o027).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # a new file follows the umask (mkstemp would be 0600)
    before = out.read_bytes()
    out.chmod(0o604)
    with open(out, "rb") as reader:  # a player with the old video open keeps playing it
        result = run("pixelize", clip, str(out), "--frames", "5")
        assert result.returncode == 0, result.stderr[-2000:]
        assert reader.read() == before
    assert frame_count(out) == 5
    assert stat.S_IMODE(out.stat().st_mode) == 0o604  # a replaced file keeps its permissions
    assert part_files(tmp_path) == []


def test_a_finished_image_replaces_the_old_one_whole_and_a_symlink_stays_a_link(tmp_path):
    rng = np.random.default_rng(7)
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(src)
    out, stats = tmp_path / "out.png", tmp_path / "s.dps"
    assert run("pixelize", str(src), str(out), umask=0o027).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    before = out.read_bytes()
    with open(out, "rb") as reader:
        assert run("pixelize", str(src), str(out), "--stats", str(stats)).returncode == 0
        assert reader.read() == before
    (rel,) = list(read_releases(stats))
    assert np.array_equal(np.asarray(Image.open(out)), rel.reconstruct())
    (tmp_path / "elsewhere").mkdir()
    target = tmp_path / "elsewhere" / "real.png"
    target.write_bytes(before)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert run("pixelize", str(src), str(link)).returncode == 0
    assert link.is_symlink() and target.read_bytes() != before and Image.open(target).size == (56, 40)
    assert part_files(tmp_path) == [] and part_files(tmp_path / "elsewhere") == []


def test_a_run_that_fails_before_its_first_release_leaves_video_and_stats_as_they_were(tmp_path, clip):
    out, stats = tmp_path / "out.mp4", tmp_path / "s.dps"
    assert run("pixelize", clip, str(out), "--frames", "3", "--stats", str(stats)).returncode == 0
    video, log = out.read_bytes(), stats.read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 100)
    result = run("pixelize", str(bad), str(out), "--stats", str(stats))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert out.read_bytes() == video and stats.read_bytes() == log  # the previous run's files, whole
    result = run("pixelize", str(bad), str(tmp_path / "new.mp4"), "--stats", str(tmp_path / "new.dps"))
    assert result.returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "out.mp4", "s.dps"]  # nothing created


def test_a_video_that_cannot_be_finished_leaves_the_previous_one_as_it_was(tmp_path, small_disk, clip):
    out, rendered, stats = small_disk / "out.mp4", small_disk / "r.mp4", tmp_path / "s.dps"
    assert run("pixelize", clip, str(out), "--frames", "2").returncode == 0
    assert run("pixelize", clip, str(tmp_path / "o.mp4"), "--stats", str(stats)).returncode == 0
    rendered.write_bytes(out.read_bytes())
    before = out.read_bytes()
    fill(small_disk)
    result = run("pixelize", PATTERN, str(out), "--frames", "60", "--quality", "0")
    assert out.read_bytes() == before
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())
    assert "No space left" in message and f"the unfinished video was removed and {out} is as it was" in message
    result = run("stats", "render", str(stats), str(rendered))
    assert result.returncode == 2 and f"{rendered} is as it was" in " ".join(result.stderr.split())
    assert out.read_bytes() == before and rendered.read_bytes() == before and frame_count(out) == 2
    assert part_files(small_disk) == []


def test_an_image_that_cannot_be_written_leaves_the_previous_one_as_it_was(tmp_path, small_disk):
    rng = np.random.default_rng(3)
    src = tmp_path / "in.png"
    Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)).save(src)
    out = small_disk / "out.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(out)
    before = out.read_bytes()
    fill(small_disk)
    # 2 px cells at a generous budget: an image far larger than the one block the old one holds
    result = run("pixelize", str(src), str(out), "--layout", "fixed", "--cell-size", "2", "--m-pixels", "1",
                 "--eps-pix", "1000")
    assert result.returncode == 2 and "No space left" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == before
    assert part_files(small_disk) == []


def test_a_device_is_written_in_place_never_replaced(tmp_path):
    """An output or --stats that is a character device (here private copies of /dev/null) or a link to one
    cannot be renamed onto: it is written as it is."""
    devices = [tmp_path / "null-out", tmp_path / "null-stats"]
    try:
        for device in devices:
            os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        pytest.skip("cannot create a device node here")
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src)
    link = tmp_path / "out.png"
    link.symlink_to(devices[0])
    result = run("pixelize", str(src), str(link), "--stats", str(devices[1]))
    assert result.returncode == 0, result.stderr[-2000:]  # fsync of /dev/null is EINVAL: not an error here
    assert link.is_symlink() and all(stat.S_ISCHR(d.stat().st_mode) for d in devices)
    assert part_files(tmp_path) == []
