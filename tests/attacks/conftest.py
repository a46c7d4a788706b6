"""Fixtures of the audit tests: the packaged face set (fetched once into the user cache, as scripts/setup
does) and a runner for `python -m attacks` in its own process, as `dpstream audit` runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def needs_audit_extra() -> None:
    pytest.importorskip("dlib", reason="the audit extra (dlib-bin, face-recognition-models) is not installed")
    pytest.importorskip("torch", reason="the audit extra (torch) is not installed")


@pytest.fixture(scope="session")
def faceset_dir() -> Path:
    needs_audit_extra()
    from attacks.faceset import build_packaged_faceset
    from attacks.sources import default_cache_dir

    return build_packaged_faceset(default_cache_dir())


@pytest.fixture(scope="session")
def faceset(faceset_dir):
    from attacks.faceset import load_faceset

    return load_faceset(faceset_dir)


def run_attacks(*args: str, timeout_s: float = 300) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "attacks", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout_s
    )
    return proc.returncode, proc.stdout, proc.stderr


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
