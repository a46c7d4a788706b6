"""`python -m attacks` refuses bad arguments and output paths before any work (exit 2, one line, no
traceback), skips unreadable photos, and a multi-process run stopped by SIGTERM stops its workers and
leaves its partial report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, needs_audit_extra, read_json, run_attacks
from .test_faceset import _operator_dir

# a mechanism audit that takes a second or two, so a check that comes too late still ends quickly
TINY_MECHANISM = ("mechanism", "--n-select", "100", "--n-eval", "100", "--no-control")
# a re-identification run of a few seconds on three packaged identities
TINY_REID = ("reid", "--max-identities", "3", "--probes-per-identity", "1", "--attackers", "dlib", "--frames", "",
             "--eps-pix", "1", "--m-pixels", "16", "--cell-size", "16", "--layouts", "fixed", "--seed", "1")


def assert_usage_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], err


def test_json_in_a_folder_that_cannot_be_created_exits_2_before_the_audit(tmp_path):
    rc, _, err = run_attacks(*TINY_MECHANISM, "--json", "/proc/nope/m.json")
    assert_usage_error(rc, err, "/proc/nope")
    assert "lower bound" not in err  # refused before the audit ran


def test_json_that_is_a_directory_exits_2_and_leaves_no_tmp_file(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    rc, _, err = run_attacks(*TINY_MECHANISM, "--json", str(target))
    assert_usage_error(rc, err, "is a directory")
    assert "lower bound" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_json_write_that_fails_exits_2_and_removes_its_tmp_file(tmp_path):
    # the scratch file is a link into a folder that does not exist: the path checks pass, the write fails
    out = tmp_path / "m.json"
    (tmp_path / "m.json.tmp").symlink_to(tmp_path / "gone" / "x")
    rc, _, err = run_attacks(*TINY_MECHANISM, "--json", str(out))
    assert_usage_error(rc, err, "cannot write", str(out))
    assert not (tmp_path / "m.json.tmp").is_symlink()
    assert not out.exists()


def test_plot_with_a_suffix_matplotlib_cannot_write_is_refused_before_the_run(tmp_path):
    needs_audit_extra()
    rc, _, err = run_attacks(*TINY_REID, "--json", str(tmp_path / "r.json"), "--plot", str(tmp_path / "r.txt"))
    assert_usage_error(rc, err, "r.txt", ".png")
    assert list(tmp_path.iterdir()) == []


def test_json_and_plot_at_the_same_path_are_refused(tmp_path):
    needs_audit_extra()
    same = tmp_path / "same.png"
    rc, _, err = run_attacks(*TINY_REID, "--json", str(same), "--plot", str(same))
    assert_usage_error(rc, err, "same file")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override,needle",
    [
        (("--probes-per-identity", "0"), "--probes-per-identity"),
        (("--attackers", ""), "--attackers"),
        (("--layouts", ""), "--layouts"),
        (("--max-identities", "0"), "--max-identities"),
        (("--max-identities", "-1"), "--max-identities"),
        (("--frames", "1"), "--frames"),
        (("--workers", "0"), "--workers"),
    ],
)
def test_sweep_arguments_that_measure_nothing_or_the_wrong_thing_exit_2(tmp_path, override, needle):
    needs_audit_extra()
    # the last of a repeated option wins: TINY_REID keeps a run that slips through short
    rc, _, err = run_attacks(*TINY_REID, *override, "--json", str(tmp_path / "r.json"))
    assert_usage_error(rc, err, needle)
    assert not (tmp_path / "r.json").exists()


def test_faces_path_that_is_a_file_says_it_is_not_a_directory(tmp_path):
    needs_audit_extra()
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not a folder")
    rc, _, err = run_attacks("reid", "--faces", str(photo), "--json", str(tmp_path / "r.json"))
    assert_usage_error(rc, err, "is not a directory")


def test_faces_folder_skips_a_file_that_is_not_an_image_with_a_warning_naming_it(tmp_path, faceset):
    needs_audit_extra()
    root = _operator_dir(tmp_path, faceset, 4, 2)
    idents = sorted(p.name for p in root.iterdir())
    # text saved with an image suffix: one identity keeps its two real photos, another drops to one
    extra = root / idents[0] / "3.jpg"
    extra.write_text("not a photo\n")
    broken = root / idents[1] / "0.jpg"
    broken.write_text("not a photo either\n")
    rc, _, err = run_attacks(
        "reid", "--faces", str(root), "--probes-per-identity", "1", "--attackers", "dlib", "--frames", "",
        "--eps-pix", "1", "--m-pixels", "16", "--cell-size", "16", "--layouts", "fixed", "--seed", "3",
        "--json", str(tmp_path / "r.json"),
    )
    assert rc == 0, err
    assert "Traceback" not in err
    assert str(extra) in err and str(broken) in err
    assert f"identity {idents[1]}" in err  # left with one photo, so skipped like any identity with one
    assert read_json(tmp_path / "r.json")["n_identities"] == 3


def _descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (psutil is not a dependency)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (a zombie uses no CPU and holds no memory)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_sigterm_stops_every_worker_and_leaves_the_partial_report(tmp_path, faceset_dir):
    out = tmp_path / "r.json"
    # a sweep of a minute or more, so that workers left behind would still be busy when they are looked for;
    # stopped after its first setting, the test takes seconds
    eps_pix = ",".join(str(e) for e in range(1, 21))
    n_settings = 1 + 2 * 2 + 20 * 3 * 2  # clean; pixelize, blur per cell size; dp per eps, m and cell size
    with open(tmp_path / "stderr", "w") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "attacks", *TINY_REID, "--eps-pix", eps_pix, "--m-pixels", "1,4,16",
             "--cell-size", "8,16", "--workers", "2", "--json", str(out)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file,
        )
        try:
            # working: the first finished setting has been written as a checkpoint
            deadline = time.monotonic() + 180
            while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert out.exists(), "no report within 180 s: " + (tmp_path / "stderr").read_text()
            assert read_json(out)["complete"] is False, "the run wrote no partial report while it was working"
            workers = _descendants(proc.pid)
            assert len(workers) >= 2
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [p for p in workers if _running(p)]
    for p in survivors:  # leave nothing behind even when the test fails
        os.kill(p, signal.SIGKILL)
    err = (tmp_path / "stderr").read_text()
    assert survivors == [], err
    assert rc == 128 + signal.SIGTERM, err
    report = read_json(out)
    assert report["complete"] is False
    assert 0 < len(report["results"]) < n_settings
    assert "interrupted by SIGTERM" in err
    assert not out.with_name(out.name + ".tmp").exists()
