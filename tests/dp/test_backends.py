"""CPU and CUDA kernels agree byte for byte for a fixed key (privacy.md §4, §6).

CI has no GPU: the CUDA kernels run under NUMBA_ENABLE_CUDASIM=1 in a subprocess (the variable must be set
before numba is imported), on a small frame with partial cells, blocks and tiles on two borders. On a machine with a GPU the
`gpu` test compares real 1080p frames.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

COMPARE = textwrap.dedent(
    """
    import secrets, sys
    import numpy as np
    from dp import PixelizeSpec, Pixelizer
    rng = np.random.default_rng(secrets.randbits(64))
    h, w = int(sys.argv[1]), int(sys.argv[2])
    grid16 = [[(4, 8, 16)[(i + j) % 3] for j in range(-(-w // 16))] for i in range(-(-h // 16))]
    grid32 = [[(4, 8, 16, 32)[(i + 2 * j) % 4] for j in range(-(-w // 32))] for i in range(-(-h // 32))]
    specs = {  # generic kernel: odd cells or 16 px blocks; tiled kernel: 32 px blocks or fixed 4..32 px
        "fixed-7-generic": PixelizeSpec(eps_pix=1.0, m_pixels=2, cell_size=7),
        "fixed-8-tiled": PixelizeSpec(eps_pix=1.0, m_pixels=2, cell_size=8),
        "map-16-generic": PixelizeSpec(eps_pix=1.0, m_pixels=2, layout="map", block_size=16,
                                       cell_sizes=(4, 8, 16), layout_map=grid16),
        "map-32-tiled": PixelizeSpec(eps_pix=1.0, m_pixels=2, layout="map", layout_map=grid32),
        "previous-32-tiled": PixelizeSpec(eps_pix=3.0, m_pixels=1, layout="previous"),
        "private-16-generic": PixelizeSpec(eps_pix=3.0, m_pixels=1, layout="private", eps_layout=1.0,
                                           block_size=16, cell_sizes=(4, 8, 16)),
        "grey-16-tiled": PixelizeSpec(eps_pix=1.0, m_pixels=3, channels=1, cell_size=16),
        "yuv420-fixed-6": PixelizeSpec(eps_pix=1.0, m_pixels=2, cell_size=6, color="yuv420"),
        "yuv420-previous-32": PixelizeSpec(eps_pix=3.0, m_pixels=1, layout="previous", color="yuv420"),
        "yuv420-private-16": PixelizeSpec(eps_pix=3.0, m_pixels=1, layout="private", eps_layout=1.0,
                                          block_size=16, cell_sizes=(4, 8, 16), color="yuv420"),
        # an RGB spec given I420 frames (i420=): both backends release the frames' RGB picture
        "rgb-from-i420-fixed-7": PixelizeSpec(eps_pix=1.0, m_pixels=2, cell_size=7),
        "rgb-from-i420-previous-32": PixelizeSpec(eps_pix=3.0, m_pixels=1, layout="previous"),
    }
    he, we = h - h % 2, w - w % 2  # I420 frames have even sides
    for name, spec in specs.items():
        i420 = "bt709" if name.startswith("rgb-from-i420") else None
        shape = (he * 3 // 2, we) if spec.color == "yuv420" or i420 else (h, w, spec.channels)
        frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
        keys = [secrets.token_bytes(32) for _ in range(2)]
        cpu, gpu = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cuda")
        for frame, key in zip(frames, keys):
            a = cpu.release(frame, key=key, timestamp_s=1.0, i420=i420)
            b = gpu.release(frame, key=key, timestamp_s=1.0, i420=i420)
            assert a.to_bytes() == b.to_bytes(), name
    # one CUDA backend across frame sizes: its device buffers are allocated, grown, then used in part
    for name in ("private-16-generic", "previous-32-tiled"):
        spec = specs[name]
        cpu, gpu = Pixelizer(spec, backend="cpu"), Pixelizer(spec, backend="cuda")
        for fh, fw in ((h // 2 + 1, w // 3 + 1), (h, w), (h // 2 + 1, w // 3 + 1)):
            frame = rng.integers(0, 256, (fh, fw, spec.channels), dtype=np.uint8)
            key = secrets.token_bytes(32)
            a = cpu.release(frame, key=key, timestamp_s=1.0)
            assert a.to_bytes() == gpu.release(frame, key=key, timestamp_s=1.0).to_bytes(), (name, fh, fw)
    print("identical")
    """
)


@pytest.mark.slow
def test_cpu_and_cuda_releases_are_byte_identical_for_fixed_key_under_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    out = subprocess.run([sys.executable, "-c", COMPARE, "45", "70"], env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "identical" in out.stdout


def _real_gpu() -> bool:
    from dp.pixelizer import cuda_usable

    return cuda_usable()


@pytest.mark.gpu
@pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA GPU")
def test_cpu_and_cuda_releases_are_byte_identical_on_real_frames():
    out = subprocess.run([sys.executable, "-c", COMPARE, "1080", "1920"], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]


def test_auto_backend_never_picks_the_simulator():
    from dp import Pixelizer, PixelizeSpec

    px = Pixelizer(PixelizeSpec(eps_pix=1.0), backend="auto")
    assert px.backend in ("cpu", "cuda")
    if not _real_gpu():
        assert px.backend == "cpu"
        assert np.asarray(px.release(np.zeros((8, 8, 3), np.uint8)).means).size == 3


@pytest.mark.skipif(any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")),
                    reason="this machine has an NVIDIA driver")
def test_auto_backend_without_a_driver_does_not_load_numba_cuda():
    """No NVIDIA driver: `auto` is the CPU at once, without importing numba.cuda (about 0.2 s of start-up)."""
    code = ("import sys; from dp import Pixelizer, PixelizeSpec; "
            "px = Pixelizer(PixelizeSpec(eps_pix=1.0), backend='auto'); "
            "print(px.backend, 'numba.cuda' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["cpu", "False"]
