"""`dpstream precompile` leaves a worker nothing to compile, and dp works wherever its cache cannot be used.

Each case runs a fresh copy of dp (as tests/dp/test_kernel_cache.py does, so the repository's own cache does
not interfere) in child processes, with an install directory nobody can write (a file where dp/__pycache__
would go: root could write any directory, so a chmod would not do), as in the container image. The worker's
child makes its dp calls independently of dp.precompile's list: the real CameraWorker warm-up for each kind
of camera, then frames of other sizes and content as the ingest delivers them (streams.frame decides their
format), every layout, and the sinks' reconstructions. It counts what every kernel compiled.
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

_COUNT = """
def kernel_counts():
    from dp import kernels_cpu
    found = {}
    for space in (vars(kernels_cpu), vars(kernels_cpu._m)):
        for name, obj in space.items():
            if hasattr(obj, "stats") and hasattr(obj, "py_func"):
                found[name] = obj
    compiled = {f"{n}{tuple(str(t) for t in sig)}": c for n, d in found.items()
                for sig, c in d.stats.cache_misses.items() if c}
    return compiled, sum(sum(d.stats.cache_hits.values()) for d in found.values())
"""

_WORKER_CALLS = _COUNT + """
import json, logging
import numpy as np
import dp
from dp import Pixelizer, PixelizeSpec, Release
from dp.color import i420_to_rgb, rgb_to_i420
from dp.errors import ConfigError
from streams.frame import i420_for, pixel_format_for, Frame
from streams.worker import CameraWorker

rng = np.random.default_rng(7)

def camera_specs():
    for color, channels in (("rgb", 3), ("rgb", 1), ("yuv420", 3)):
        common = dict(eps_pix=0.7, m_pixels=9, channels=channels, color=color)
        yield dict(common, layout="fixed", cell_size=8)
        yield dict(common, layout="fixed", cell_size=13)
        yield dict(common, layout="fixed", cell_size=300)
        yield dict(common, layout="fixed", cell_size=301)
        yield dict(common, layout="map", block_size=16, cell_sizes=(4, 8, 16), layout_map=((4, 16), (8, 8)))
        yield dict(common, layout="previous", cell_sizes=(2, 4, 8, 16, 32))
        yield dict(common, layout="private", eps_layout=0.2)
        yield dict(common, layout="private", eps_layout=0.2, block_size=192, cell_sizes=(8, 16, 32, 64))

def frames(spec, height, width):
    # what the ingest delivers for this spec: read-only, C-contiguous (streams.ingest)
    fmt = pixel_format_for(spec.color, spec.channels)
    if fmt == "rgb":
        return [Frame(0, 0.0, _ro(rng.integers(0, 256, (height, width, 1), dtype=np.uint8)), pixel_format="gray")]
    out = [Frame(0, 0.0, _ro(rgb_to_i420(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))),
                 pixel_format="i420", colorimetry="bt601")]
    if fmt == "auto":  # an odd-sized stream: the ingest converts its padded I420 copy to RGB
        packed = rgb_to_i420(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        out.append(Frame(0, 0.0, _ro(np.ascontiguousarray(i420_to_rgb(packed, "bt709")[:height - 1, :width - 1]))))
    return out

def _ro(a):
    a.flags.writeable = False
    return a

for settings in camera_specs():
    try:
        spec = PixelizeSpec(**settings)
    except ConfigError:
        continue  # a camera no worker can be given
    worker = CameraWorker("cam", "test:smpte", spec, ledger=None, backend="cpu")
    worker._warm_up()  # the worker's own warm-up, as at its start
    height, width = (32, 32) if spec.layout == "map" else (96, 130)
    for frame in frames(spec, height, width):
        px = Pixelizer(spec, backend="cpu")
        for _ in range(3):
            rel = px.release(frame.array, i420=i420_for(frame, spec.color))
        if rel.channels == 3:
            rel.reconstruct_i420(out=np.empty(rel.i420_size, dtype=np.uint8))
        rel.reconstruct()
        Release.from_bytes(rel.to_bytes()).reconstruct()

compiled, hits = kernel_counts()
print("REPORT " + json.dumps({"dp": dp.__file__, "compiled": compiled, "hits": hits}))
"""

_PRECOMPILE = "import sys; from service.cli import main; sys.argv[0] = 'dpstream'; main()"


def _site(tmp_path: Path) -> tuple[Path, dict]:
    """A fresh copy of dp whose install directory is not writable, and an environment for its children."""
    site, home = tmp_path / "site", tmp_path / "home"
    shutil.copytree(REPO_ROOT / "dp", site / "dp", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "dp" / "__pycache__").write_text("")
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_CACHE", "NUMBA_CPU", "NUMBA_DEBUG"))}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT)]), HOME=str(home),
               XDG_CACHE_HOME=str(home / ".cache"))
    return site, env


def _run(args: list[str], site: Path, env: dict, timeout_s: float = 900) -> subprocess.CompletedProcess:
    child = subprocess.run([sys.executable, *args], cwd=str(site), env=env, capture_output=True, text=True,
                           timeout=timeout_s)
    assert child.returncode == 0, (child.stdout[-2000:], child.stderr[-4000:])
    return child


def _report(child: subprocess.CompletedProcess, site: Path) -> dict:
    report = json.loads([ln for ln in child.stdout.splitlines() if ln.startswith("REPORT ")][-1][7:])
    assert Path(report["dp"]).is_relative_to(site)  # the fresh copy, not the repository's warm cache
    return report


@pytest.mark.slow  # a cold compile of every kernel: about 3 to 6 minutes on 2 cores
def test_after_precompile_a_worker_compiles_no_kernel(tmp_path):
    site, env = _site(tmp_path)
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    pre = _run(["-c", _PRECOMPILE, "precompile"], site, env)
    assert str(tmp_path / "numba-cache") in pre.stderr, pre.stderr[-2000:]
    assert list((tmp_path / "numba-cache").rglob("*.nbi")), "precompile left no cache in NUMBA_CACHE_DIR"

    worker = _report(_run(["-c", _WORKER_CALLS], site, env), site)
    assert worker["compiled"] == {}, f"kernels compiled after precompile: {sorted(worker['compiled'])}"
    assert worker["hits"] > 0
    assert not list((tmp_path / "home").rglob("*.nbi")), "a cache went to the user's directory"


_ONE_RELEASE = _COUNT + """
import json
import numpy as np
import dp
from dp import Pixelizer, PixelizeSpec
from dp import kernels_cpu
frame = np.full((40, 50, 1), 128, dtype=np.uint8)
frame.flags.writeable = False
rel = Pixelizer(PixelizeSpec(eps_pix=1e3, m_pixels=1, channels=1, cell_size=10), backend="cpu").release(frame)
compiled, hits = kernel_counts()
print("REPORT " + json.dumps({"dp": dp.__file__, "cache": kernels_cpu._CACHE, "compiled": compiled,
                              "hits": hits, "means": rel.means.tolist()}))
"""


@pytest.mark.slow  # a cold compile of one kernel: about 30 s on 2 cores
@pytest.mark.parametrize("home", ["writable", "read-only"])
def test_a_cache_that_cannot_be_written_falls_back_to_compiling(tmp_path, home):
    site, env = _site(tmp_path)
    # NUMBA_CACHE_DIR below a regular file: it can neither be created nor written (even by root)
    (tmp_path / "not-a-dir").write_text("")
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "not-a-dir" / "numba-cache")
    if home == "read-only":  # nothing at all is writable: Numba would refuse to define the kernels
        (tmp_path / "home" / ".cache").write_text("")
    report = _report(_run(["-c", _ONE_RELEASE], site, env, timeout_s=300), site)
    assert report["compiled"], "nothing was compiled, so nothing was tested"
    assert set(report["means"]) <= {127, 128, 129}  # a real release (eps 1000 on a flat frame)
    if home == "read-only":
        assert report["cache"] is False  # compiled in memory, every start
    else:  # Numba's next choice: the user's cache directory, then loaded from there
        assert list((tmp_path / "home" / ".cache").rglob("*.nbi"))
        again = _report(_run(["-c", _ONE_RELEASE], site, env, timeout_s=300), site)
        assert again["compiled"] == {} and again["hits"] > 0


@pytest.mark.slow  # two cold compiles of one kernel: about 60 s on 2 cores
def test_a_cache_compiled_for_another_cpu_is_a_miss_and_is_compiled_again(tmp_path):
    site, env = _site(tmp_path)
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")
    # Numba keys each cached signature by CPU name and features: a cache built as for a generic x86-64
    # stands for an image built on another machine
    built = _report(_run(["-c", _ONE_RELEASE], site, dict(env, NUMBA_CPU_NAME="generic")), site)
    assert built["compiled"]
    here = _report(_run(["-c", _ONE_RELEASE], site, env), site)
    assert here["compiled"], "a cache built for another CPU was loaded"
    assert set(here["means"]) <= {127, 128, 129}
    again = _report(_run(["-c", _ONE_RELEASE], site, env), site)
    assert again["compiled"] == {} and again["hits"] > 0  # this CPU's entries were added beside the other
