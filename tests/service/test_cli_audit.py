"""`dpstream audit ...` as a real process: it becomes `python -m attacks`, so a signal meant for it reaches
the audit and its exit status is the audit's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.audits import attacks_available
from tests.service.conftest import wait_for
from tests.service.test_audits_api import alive, attacks_processes, kill_leftovers

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not attacks_available(), reason="attacks (python -m attacks) is not installed")


def dpstream_audit(*args: str) -> subprocess.Popen:
    # its own session, as a job of a shell: the group id finds whatever it started
    return subprocess.Popen([sys.executable, "-m", "service.cli", "audit", *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def in_group(pgid: int) -> set[int]:
    return {pid for pid in attacks_processes() if _pgid(pid) == pgid}


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_sigterm_to_dpstream_audit_stops_the_audit(tmp_path: Path) -> None:
    proc = dpstream_audit("mechanism", "--eps-pix", "1", "--m-pixels", "1", "--n-eval", "5000000",
                          "--json", str(tmp_path / "r.json"))
    audits: set[int] = set()
    try:
        audits = wait_for(lambda: in_group(proc.pid), timeout_s=60, interval_s=0.1, what="the attacks process")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        wait_for(lambda: not any(alive(pid) for pid in audits), timeout_s=10, what="the audit to stop")
    finally:
        audits |= in_group(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill_leftovers(audits)


def test_dpstream_audit_exits_with_the_audits_status_and_message() -> None:
    proc = dpstream_audit("mechanism", "--n-eval", "10")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "n_eval=10" in err.decode()
