"""Numba's on-disk cache of dp's CPU kernels follows dp/cell_math.py wherever it lands.

The kernels inline cell_math's sampler, and Numba checks only the defining file's stamp: a cache that
ignored cell_math.py would load a stale sampler after an upgrade that changed only that file. In-tree
caching (dp/__pycache__) was covered; a read-only install (the Docker image: the cache goes to the user's
directory) and NUMBA_CACHE_DIR were not. Each case runs a fresh copy of dp in child processes: compile,
load from the cache, then edit cell_math.py and check the kernel is compiled again.
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

_CHILD = """
import json, sys
import numpy as np
import dp
from dp import kernels_cpu
out = np.empty((16, 4), dtype=np.uint32)
kernels_cpu.chacha20_blocks(np.arange(8, dtype=np.uint32), 0, 4, 1, out)
st = kernels_cpu.chacha20_blocks.stats
print("REPORT " + json.dumps({"dp": dp.__file__, "hits": sum(st.cache_hits.values()),
                              "misses": sum(st.cache_misses.values())}))
"""


def _run(site: Path, env: dict) -> dict:
    child = subprocess.run([sys.executable, "-c", _CHILD], cwd=str(site), env=env, capture_output=True, text=True,
                           timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads([ln for ln in child.stdout.splitlines() if ln.startswith("REPORT ")][-1][7:])
    assert Path(report["dp"]).is_relative_to(site)  # the fresh copy, not the repository's warm cache
    return report


def _cache_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("kernels_cpu.chacha20_blocks-*.nbi")] if root.exists() else []


@pytest.mark.parametrize("where", ["read-only install", "NUMBA_CACHE_DIR"])
def test_the_kernel_cache_follows_cell_math_wherever_it_lands(tmp_path, where):
    site, home, user_dir = tmp_path / "site", tmp_path / "home", tmp_path / "numba-cache"
    shutil.copytree(REPO_ROOT / "dp", site / "dp", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env.update(PYTHONPATH=str(site), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    if where == "read-only install":
        # a file where dp/__pycache__ would go: no cache can be written next to the source, as in an image
        # whose site-packages the service's user cannot write (root could write any directory, so a chmod
        # would not do)
        (site / "dp" / "__pycache__").write_text("")
        expected = home / ".cache"
    else:
        env["NUMBA_CACHE_DIR"] = str(user_dir)
        expected = user_dir

    first = _run(site, env)
    assert first["misses"] >= 1 and first["hits"] == 0
    assert _cache_files(expected), f"no cache under {expected}"
    if where == "NUMBA_CACHE_DIR":
        assert not _cache_files(site), "NUMBA_CACHE_DIR was ignored: the cache went next to the source"
    again = _run(site, env)
    assert again["hits"] >= 1 and again["misses"] == 0  # loaded, not compiled

    with open(site / "dp" / "cell_math.py", "a") as f:
        f.write("\n# an upgrade that changed only cell_math.py\n")
    after = _run(site, env)
    assert after["misses"] >= 1 and after["hits"] == 0, "a kernel cached before cell_math.py changed was loaded"
