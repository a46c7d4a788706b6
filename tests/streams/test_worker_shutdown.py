"""CameraWorker.stop() while dp's kernels are still compiling on a cold Numba cache (a real compile, in a child).

dp's CPU kernels are cached next to their source (dp/__pycache__) unless NUMBA_CACHE_DIR is set. The child
process (NUMBA_CACHE_DIR unset) imports a fresh copy of dp from a temporary directory: its cache there is
empty and the worker's warm-up compiles everything, as on a node's first start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import atexit, json, threading, time

from numba.core import event

import dp
from dp import PixelizeSpec
from streams.worker import CameraWorker

compiling = threading.Event()


class _CompileStarted(event.Listener):
    def on_start(self, _event):
        compiling.set()

    def on_end(self, _event):
        pass


event.register("numba:compile", _CompileStarted())
released = []
report = {}


def _at_exit():  # registered before the worker's exit hook, so it runs after it (atexit runs last-in first)
    report["released_at_exit"] = len(released)
    print("REPORT " + json.dumps(report), flush=True)


atexit.register(_at_exit)
worker = CameraWorker(
    "cold", "test:ball?width=64&height=48&fps=30",
    PixelizeSpec(eps_pix=1.0, channels=3, layout="fixed", cell_size=16),
    ledger=None, sinks=[released.append],
)
worker.start()
if not compiling.wait(120):
    raise SystemExit("dp's kernels never started compiling: the cache was not cold")
started = time.monotonic()
worker.stop()
stop_s = time.monotonic() - started
at_stop = len(released)
report.update(
    dp=dp.__file__, stop_s=stop_s, state=worker.health.state.value, released_at_stop=at_stop,
    worker_threads_after_stop=[t.name for t in threading.enumerate()
                               if t.name in ("dpstream-cold-release", "dpstream-cold-supervisor")],
)
"""


@pytest.mark.slow  # one cold compile of dp's kernels: about 40 s on a 2-core node
def test_stop_during_a_cold_compile_returns_at_once_releases_nothing_and_the_process_exits_cleanly(tmp_path):
    shutil.copytree(REPO_ROOT / "dp", tmp_path / "dp", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(REPO_ROOT)])
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=400
    )
    lines = [line for line in child.stdout.splitlines() if line.startswith("REPORT ")]
    assert child.returncode == 0, (child.returncode, child.stdout[-2000:], child.stderr[-4000:])
    assert lines, child.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    assert Path(report["dp"]).is_relative_to(tmp_path)  # the cold copy, not the repository's warm cache
    # The old stop() waited its whole 10 s join timeout for the compiling release thread.
    assert report["stop_s"] < 3.0, report
    assert report["state"] == "disabled"
    assert report["worker_threads_after_stop"] == []
    assert report["released_at_stop"] == 0 and report["released_at_exit"] == 0
