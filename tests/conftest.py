"""Shared test configuration. Area fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os

# Never let a CUDA simulator leak into the main test process: backend="auto" must mean the real thing.
os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
