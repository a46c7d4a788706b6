"""Hostile inputs to the public types: every one is refused with the project's own error (style.md)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from dp import ConfigError, Ledger, Pixelizer, PixelizeSpec, Release, ReleaseFormatError


@pytest.mark.parametrize("data", ["DPSR", None, 10**12, 3.5])
def test_a_release_from_anything_but_bytes_is_a_format_error(data):
    # bytes(10**12) would allocate a terabyte of zeros before any check
    with pytest.raises(ReleaseFormatError, match="bytes"):
        Release.from_bytes(data)


def test_a_release_parses_from_any_bytes_like_object(key):
    px = Pixelizer(PixelizeSpec(eps_pix=1.0, channels=1, cell_size=5))
    data = px.release(np.zeros((11, 13, 1), np.uint8), camera_id="c", frame_index=3, timestamp_s=1.5,
                      key=key).to_bytes()
    for view in (bytearray(data), memoryview(data)):
        assert Release.from_bytes(view).to_bytes() == data


def test_a_signalling_nan_epsilon_is_a_config_error():
    with pytest.raises(ConfigError, match="eps_pix"):
        PixelizeSpec(eps_pix=Decimal("sNaN"))
    with pytest.raises(ConfigError, match="eps_window"):
        Ledger(Decimal("sNaN"), 10.0)
    with pytest.raises(ConfigError, match="eps"):
        Ledger(1.0, 10.0).try_spend(0.0, Decimal("sNaN"))


def test_replace_refuses_a_setting_that_does_not_exist():
    spec = PixelizeSpec(eps_pix=1.0)
    with pytest.raises(ConfigError, match="eps_pixel"):
        spec.replace(eps_pixel=0.5)  # a typo must not pass silently or as a TypeError
    assert spec.replace(eps_pix=0.5).eps_pix == 0.5
