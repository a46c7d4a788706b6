"""What the attacker sees under each setting."""

from __future__ import annotations

import numpy as np
import pytest

from attacks.errors import AuditError
from attacks.privatize import Setting, blur_gaussian, pixelize_plain, privatize


def _image(seed=0, shape=(40, 48, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_plain_pixelization_fills_each_cell_with_its_mean_including_partial_border_cells():
    img = _image(shape=(20, 20, 3))
    out = pixelize_plain(img, 8)
    for y0, x0 in [(0, 0), (8, 16), (16, 16)]:
        cell = img[y0 : y0 + 8, x0 : x0 + 8].reshape(-1, 3).mean(axis=0)
        assert np.all(np.abs(out[y0, x0].astype(float) - cell) <= 0.5)
        assert np.all(out[y0 : y0 + 8, x0 : x0 + 8] == out[y0, x0])


def test_blur_keeps_shape_and_smooths():
    img = _image()
    out = blur_gaussian(img, 8)
    assert out.shape == img.shape
    assert np.abs(np.diff(out.astype(float), axis=1)).mean() < np.abs(np.diff(img.astype(float), axis=1)).mean() / 3


@pytest.mark.parametrize("layout,cell", [("fixed", 8), ("previous", None)])
def test_dp_releases_are_fresh_each_time(layout, cell):
    img = _image()
    s = Setting("dp", cell_size=cell, eps_pix=1.0, m_pixels=16, layout=layout)
    a, b = privatize(s, img), privatize(s, img)
    assert a.shape == img.shape and a.dtype == np.uint8
    assert not np.array_equal(a, b)


def test_averaging_k_releases_brings_the_image_closer_to_plain_pixelization():
    img = np.full((64, 64, 3), 120, np.uint8)
    s = Setting("dp", cell_size=16, eps_pix=1.0, m_pixels=16, layout="fixed")
    ref = pixelize_plain(img, 16).astype(float)
    err1 = np.abs(privatize(s, img, 1) - ref).mean()
    err25 = np.abs(privatize(s, img, 25) - ref).mean()
    # noise of a mean of 25 has a fifth of the spread; allow a wide margin
    assert err25 < err1 / 2.5


def test_bad_settings_are_refused():
    with pytest.raises(AuditError):
        Setting("sharpen")
    with pytest.raises(AuditError):
        Setting("pixelize")
    with pytest.raises(AuditError):
        Setting("dp", eps_pix=1.0, m_pixels=16, layout="fixed")
    with pytest.raises(AuditError):
        Setting("dp", cell_size=16, eps_pix=-1.0, m_pixels=16, layout="fixed").spec()
