from __future__ import annotations

import secrets
from fractions import Fraction

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    # test data only; noise always comes from the production ChaCha sampler
    return np.random.default_rng(secrets.randbits(64))


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


def within(t: float, s: float, window_s: float) -> bool:
    """Whether a spend at `s` lies in the closed window of `window_s` seconds ending at `t`, in exact arithmetic
    (the truth the ledger's tests check it against)."""
    return 0 <= Fraction(t) - Fraction(s) <= Fraction(window_s)
