"""A live config change that the camera's dp backend cannot run is refused when it is made, not dropped at the
next frame.

CUDA holds a macro-block's cell sums in shared memory (dp.kernels_cuda.MAX_SHARED_SUMS); a spec past that
used to be queued, then raised inside the release thread, where it was logged as a frame error and lost
(together with any ledger or rate change queued with it). CI has no GPU: the CUDA backend runs under
NUMBA_ENABLE_CUDASIM=1 in a subprocess (the variable must be set before numba is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import sys
    from dp import ConfigError, PixelizeSpec
    from dp.kernels_cuda import MAX_SHARED_SUMS
    from streams.worker import CameraWorker

    backend = sys.argv[1]
    start = PixelizeSpec(eps_pix=1.0, layout="fixed", cell_size=16)
    fits = PixelizeSpec(eps_pix=0.5, layout="previous", block_size=32, cell_sizes=(4, 8, 16, 32))
    # 2 px cells in 128 px blocks: 64 * 64 * 3 sums per macro-block
    too_big = PixelizeSpec(eps_pix=0.5, layout="previous", block_size=128, cell_sizes=(2, 4, 8, 16, 32, 64, 128))
    assert (too_big.block_size // min(too_big.cell_sizes)) ** 2 * too_big.channels > MAX_SHARED_SUMS
    w = CameraWorker("cam", "test:ball?width=64&height=48", start, ledger=None, backend=backend)
    print("backend", w._pixelizer.backend)
    try:
        w.update_config(spec=too_big, release_fps=2.0)
    except ConfigError as err:
        print("refused", err)
    else:
        print("accepted")
    print("pending", sorted(w._pending))
    w.update_config(spec=fits)
    print("fits", sorted(w._pending))
    """
)


def _run(backend: str, **env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CODE, backend], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def test_a_spec_past_cudas_shared_memory_is_refused_by_update_config():
    lines = _run("cuda", NUMBA_ENABLE_CUDASIM="1")
    assert lines[0] == "backend cuda"
    assert lines[1].startswith("refused camera 'cam': block_size=128 with cell size 2 gives 12288 sums"), lines
    assert "use larger cells" in lines[1]
    assert lines[2] == "pending []"  # nothing of the refused call is queued, not even its release_fps
    assert lines[3] == "fits ['spec']"


def test_the_cpu_backend_takes_the_same_spec():
    lines = _run("cpu")
    assert lines[:3] == ["backend cpu", "accepted", "pending ['release_fps', 'spec']"]
