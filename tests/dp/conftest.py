from __future__ import annotations

import secrets

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    # test data only; noise always comes from the production ChaCha sampler
    return np.random.default_rng(secrets.randbits(64))


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)
