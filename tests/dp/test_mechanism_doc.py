"""docs/mechanism.md states the mechanism's figures: check each against the code, so that neither changes
alone (the defaults table, the format versions and magic, the noise domains, the sampler's digits and bound,
the sensitivity formulas)."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from dp import Ledger, Pixelizer, PixelizeSpec, Release, cell_math, release
from dp.cell_math import MAX_DIGITS
from dp.errors import ConfigError
from dp.noise import laplace_tables, sampler_digits

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "mechanism.md").read_text()


def defaults_table() -> dict[str, tuple[str, str]]:
    lines = DOC.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting | `PixelizeSpec` |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        name, spec, camera = (c.strip() for c in line.strip().strip("|").split("|"))
        rows[name.strip("`")] = (spec, camera)
    return rows


def as_value(cell: str, like: object) -> object:
    if isinstance(like, tuple | list):
        return tuple(int(x) for x in cell.split(","))
    if isinstance(like, str):
        return cell
    return type(like)(cell)


def test_the_defaults_table_matches_pixelize_spec_and_the_service_camera():
    from service.models import Camera

    camera = Camera(id="doc", source="test:ball")
    rows = defaults_table()
    assert {"eps_pix", "m_pixels", "layout", "cell_sizes", "release_fps", "eps_window", "window_s"} <= set(rows)
    for name, (spec_cell, camera_cell) in rows.items():
        if spec_cell == "(required)":
            with pytest.raises(TypeError):
                PixelizeSpec()  # type: ignore[call-arg]
        elif spec_cell:
            default = PixelizeSpec.__dataclass_fields__[name].default  # fixed mode then folds the grid to cell_size
            assert as_value(spec_cell, default) == default, name
        else:
            assert name not in PixelizeSpec.__dataclass_fields__, f"{name} is a PixelizeSpec field: give its default"
        value = getattr(camera, name)
        assert as_value(camera_cell, value) == (tuple(value) if isinstance(value, list) else value), name


def test_the_stated_window_holds_the_stated_releases_per_second():
    from service.models import Camera

    camera = Camera(id="doc", source="test:ball")
    m = re.search(r"the window's budget is (\d+) of them, at most\s+one release per second", DOC)
    assert m, "the sentence about the default window moved"
    per_window = camera.eps_window / camera.to_spec().eps_frame
    assert int(m.group(1)) == per_window == camera.release_fps * camera.window_s
    # a closed window of window_s seconds holds one release more than window_s * release_fps
    m = re.search(r"one second apart would put (\d+) in one window: the ledger\s+refuses about one in (\d+)", DOC)
    assert m and int(m.group(1)) == int(m.group(2)) == per_window + 1
    ledger = Ledger(eps_window=camera.eps_window, window_s=camera.window_s)
    period = int(per_window) + 1
    granted = [ledger.try_spend(t / camera.release_fps, camera.to_spec().eps_frame) for t in range(10 * period)]
    assert [t for t, ok in enumerate(granted) if not ok] == list(range(period - 1, 10 * period, period))


def test_format_magic_versions_and_domains_are_the_code_s():
    assert f"`{release.MAGIC.decode()}`" in DOC
    m = re.search(r"the format version \(1 for RGB and grey; (\d) adds a colour\s+byte for `yuv420`\)", DOC)
    assert m and int(m.group(1)) == release.FORMAT_VERSION
    frame = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    rgb = Pixelizer(PixelizeSpec(eps_pix=1.0, cell_size=4), backend="cpu").release(frame).to_bytes()
    assert rgb[:4] == release.MAGIC and rgb[4] == 1
    for name in ("DOMAIN_PIXELS", "DOMAIN_LAYOUT"):
        m = re.search(rf"`{name}` = (\d+)", DOC)
        assert m and int(m.group(1)) == getattr(cell_math, name), name
    m = re.search(r"at\s+most (\d+) digits, `MAX_DIGITS`", DOC)
    assert m and int(m.group(1)) == cell_math.MAX_DIGITS
    assert Release.from_bytes(rgb).to_bytes() == rgb


def test_the_stated_sampler_bound_holds_over_the_stated_scales():
    m = re.search(r"stays below 2\^-(\d+) over scales from ([\d.]+) to (1e\d+)", DOC)
    assert m, "the sampler's bound sentence moved"
    bound, lo, hi = 2.0 ** -int(m.group(1)), Decimal(m.group(2)), Decimal(m.group(3))
    default_rgb = PixelizeSpec(eps_pix=1.0).noise_scale
    for scale in (lo, Decimal(1), Decimal(17), default_rgb, Decimal(378_000), hi):
        assert laplace_tables(scale).tv_bound < bound, scale


def test_the_stated_bound_at_the_largest_accepted_scale_holds_at_every_scale():
    m = re.search(r"at the largest the sampler takes \(about ([\d.]+e\d+), (\d) digits\) it is 2\^-([\d.]+), so\s+"
                  r"it is below 2\^-([\d.]+) at every scale", DOC)
    assert m, "the sentence about the largest scale moved"
    lo, hi = Decimal(1), Decimal(10) ** 17  # the largest accepted scale, by bisection on the spec's own check
    for _ in range(80):
        mid = (lo + hi) / 2
        try:
            sampler_digits(mid)
            lo = mid
        except ConfigError:
            hi = mid
    assert abs(float(lo) / float(m.group(1)) - 1) < 0.05 and sampler_digits(lo) == int(m.group(2)) == MAX_DIGITS
    tv = laplace_tables(lo).tv_bound
    assert abs(-math.log2(tv) - float(m.group(3))) < 0.01 and tv < 2.0 ** -float(m.group(4))
    for scale in (Decimal("0.0255"), Decimal(1), Decimal(10) ** 12, lo / 2, lo * Decimal("0.99")):
        assert laplace_tables(scale).tv_bound < 2.0 ** -float(m.group(4)), scale


def test_the_stated_sensitivities_are_the_spec_s():
    fixed = PixelizeSpec(eps_pix=1.0, cell_size=8)
    assert "In the `fixed` layout `block_size` and `cell_sizes` become `cell_size`" in DOC
    assert (fixed.block_size, fixed.cell_sizes) == (8, (8,))
    assert "`Δ = 255 · m_pixels · C`" in DOC and "`4 · m_pixels · C_score · G /" in DOC
    for m_pixels, channels, color in ((1, 1, "rgb"), (16, 3, "rgb"), (7, 3, "yuv420")):
        spec = PixelizeSpec(eps_pix=2.0, m_pixels=m_pixels, channels=channels, color=color, cell_size=4)
        assert spec.sensitivity_l1 == 255 * m_pixels * channels
        assert spec.noise_scale == Decimal(spec.sensitivity_l1) / 2
        private = spec.replace(layout="private", eps_layout=0.5)
        c_score = 1 if color == "yuv420" else channels
        assert private.layout_sensitivity_l1 == 4 * m_pixels * c_score * private.gradient_clip
