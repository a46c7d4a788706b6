"""`PixelizeSpec`: what one release does and what it costs.

The spec owns its privacy map (style.md, after OpenDP): `sensitivity_l1`, `noise_scale`, `eps_frame` sit
beside the settings they follow from, and every bad value is refused when the spec is built, before any
frame flows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from functools import cached_property, lru_cache
from typing import Literal

import numpy as np

from dp.errors import ConfigError

LayoutMode = Literal["fixed", "map", "previous", "private"]
LAYOUT_MODES: tuple[str, ...] = ("fixed", "map", "previous", "private")
COLORS: tuple[str, ...] = ("rgb", "yuv420")
DEFAULT_CELL_SIZES: tuple[int, ...] = (4, 8, 16, 32)


@lru_cache(maxsize=256)  # the ledger converts every frame's cost
def exact_epsilon(eps: float) -> Fraction:
    """The decimal number the operator wrote (`0.1` is 1/10, not the binary float nearest to it).

    Noise scales and the ledger both use this exact value, so a budget of 0.3 holds exactly three
    releases of 0.1, and the noise is calibrated to that same 1/10.
    """
    return Fraction(repr(float(eps)))


_NUMBERS = (int, float, np.integer, np.floating, Fraction, Decimal)


def _check_number(name: str, value: object, hint: str) -> float:
    """`value` as a float when it is a real number (never a bool, a string or an array), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        raise ConfigError(f"{name}={value!r} is not a number; {hint}")
    try:
        return float(value)
    except OverflowError:
        raise ConfigError(f"{name}={value!r} is too large; {hint}") from None
    except ValueError:  # Decimal('sNaN') cannot become a float
        raise ConfigError(f"{name}={value!r} is not a finite number; {hint}") from None


def _check_eps(name: str, value: float, *, allow_zero: bool = False) -> float:
    v = _check_number(name, value, "give a positive epsilon such as 1.0")
    if not math.isfinite(v):
        raise ConfigError(f"{name}={value!r} is not finite; give a positive epsilon such as 1.0")
    if v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name}={value!r} must be > 0; give a positive epsilon such as 1.0")
    if v > 1e4:
        raise ConfigError(f"{name}={value!r} is too large to mean anything; use at most 1e4")
    return v


def _check_int(name: str, value: object, *, lo: int, hi: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{name}={value!r} must be an integer; {hint}")
    v = int(value)
    if not lo <= v <= hi:
        raise ConfigError(f"{name}={v} is out of range [{lo}, {hi}]; {hint}")
    return v


@dataclass(frozen=True)
class PixelizeSpec:
    """One camera's release settings and their privacy map.

    Each release of one frame is `eps_frame`-differentially private (`eps_frame = eps_layout + eps_pix`)
    for frames that differ in at most `m_pixels` pixel positions.

    Usage::

        PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16)
        PixelizeSpec(eps_pix=1.0, m_pixels=16, layout="private", eps_layout=0.1)

    `m_pixels` is a threat-model setting (the largest thing protected, in pixels at the camera's working
    distance), not a quality knob. `layout_map` (map mode) holds one cell size per macro-block, row-major,
    shape `(ceil(H / block_size), ceil(W / block_size))`. In `fixed` mode the macro-block *is* the cell
    (`block_size` becomes `cell_size`), so any cell size works and cells are stored in raster order.
    `gradient_clip` (G) and `detail_gain` are public constants of the adaptive rule (privacy.md §3).

    `color="yuv420"` releases frames in the decoder's planar YUV 4:2:0 (I420) as they are, with no RGB
    conversion: each cell gives the means of its Y, U and V samples. One changed pixel position moves one
    Y sample and the U and V samples of its 2x2 block, so the sensitivity is 255 * m * 3 as for RGB. It
    needs channels=3 and even cell sizes (a cell then holds whole 2x2 chroma blocks); the private layout
    scores luma only.
    """

    eps_pix: float
    m_pixels: int = 16
    channels: int = 3
    layout: LayoutMode = "fixed"
    cell_size: int = 16
    cell_sizes: tuple[int, ...] = DEFAULT_CELL_SIZES
    block_size: int = 32
    eps_layout: float = 0.0
    layout_map: tuple[tuple[int, ...], ...] | None = field(default=None)
    gradient_clip: int = 32
    detail_gain: float = 0.25
    color: str = "rgb"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "eps_pix", _check_eps("eps_pix", self.eps_pix))
        set_(self, "m_pixels", _check_int("m_pixels", self.m_pixels, lo=1, hi=1 << 20,
                                          hint="m_pixels is the number of pixel positions protected, >= 1"))
        if isinstance(self.channels, bool) or not isinstance(self.channels, int | np.integer) \
                or self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels!r} must be 1 (grey) or 3 (RGB)")
        set_(self, "channels", int(self.channels))
        if not isinstance(self.color, str) or self.color not in COLORS:
            raise ConfigError(f"color={self.color!r} is unknown; use one of {', '.join(COLORS)}")
        if self.color == "yuv420" and self.channels != 3:
            raise ConfigError("color='yuv420' releases Y, U and V: it needs channels=3")
        if not isinstance(self.layout, str) or self.layout not in LAYOUT_MODES:
            raise ConfigError(f"layout={self.layout!r} is unknown; use one of {', '.join(LAYOUT_MODES)}")
        set_(self, "eps_layout", _check_eps("eps_layout", self.eps_layout, allow_zero=True))
        if self.layout == "private" and self.eps_layout == 0:
            raise ConfigError("layout='private' needs eps_layout > 0 (the budget spent on choosing the layout)")
        if self.layout != "private" and self.eps_layout != 0:
            raise ConfigError(
                f"eps_layout={self.eps_layout} is only spent by layout='private'; set it to 0 for "
                f"layout={self.layout!r}"
            )
        set_(self, "cell_size", _check_int("cell_size", self.cell_size, lo=1, hi=1024,
                                           hint="use a cell side in pixels such as 16"))
        set_(self, "gradient_clip", _check_int("gradient_clip", self.gradient_clip, lo=1, hi=255,
                                               hint="G clips neighbour differences, 1..255"))
        gain = _check_number("detail_gain", self.detail_gain, "use a positive number such as 0.25")
        if not (math.isfinite(gain) and gain > 0):
            raise ConfigError(f"detail_gain={self.detail_gain!r} must be a positive finite number")
        set_(self, "detail_gain", gain)

        if self.layout == "fixed":
            # The macro-block is the cell: any size works and the order is plain raster order.
            set_(self, "block_size", self.cell_size)
            set_(self, "cell_sizes", (self.cell_size,))
        else:
            set_(self, "block_size", _check_int("block_size", self.block_size, lo=1, hi=256,
                                                hint="use a macro-block side such as 32"))
            hint = "give integers such as (4, 8, 16, 32)"
            if isinstance(self.cell_sizes, str | bytes | dict) or not hasattr(self.cell_sizes, "__iter__"):
                raise ConfigError(f"cell_sizes={self.cell_sizes!r} must be a sequence of cell sides; {hint}")
            sizes = tuple(sorted({_check_int("cell_sizes", s, lo=1, hi=1024, hint=hint) for s in self.cell_sizes}))
            if not sizes or len(sizes) > 16:
                raise ConfigError(f"cell_sizes={self.cell_sizes!r} must list 1 to 16 sizes")
            bad = [s for s in sizes if s < 1 or self.block_size % s]
            if bad:
                raise ConfigError(
                    f"cell_sizes {bad} do not divide block_size={self.block_size}; every candidate cell size "
                    f"must divide the macro-block (for block_size 32 use sizes from 1, 2, 4, 8, 16, 32)"
                )
            set_(self, "cell_sizes", sizes)
            if self.cell_size not in sizes:
                raise ConfigError(
                    f"cell_size={self.cell_size} (the starting layout) must be one of cell_sizes={sizes}"
                )
        if self.color == "yuv420" and any(size % 2 for size in self.cell_sizes):
            raise ConfigError(
                f"color='yuv420' needs even cell sizes (whole 2x2 chroma blocks per cell); got {self.cell_sizes}"
            )
        if self.layout == "map":
            if self.layout_map is None:
                raise ConfigError("layout='map' needs layout_map: one cell size per macro-block")
            try:
                arr = np.asarray(self.layout_map)
            except (TypeError, ValueError):
                raise ConfigError("layout_map must be a rectangular 2-D grid of cell sizes") from None
            if arr.ndim != 2 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
                raise ConfigError(
                    f"layout_map must be a non-empty 2-D grid of integer cell sizes, got shape {arr.shape}"
                )
            unknown = sorted(set(np.unique(arr).tolist()) - set(self.cell_sizes))
            if unknown:
                raise ConfigError(f"layout_map holds cell sizes {unknown} not in cell_sizes={self.cell_sizes}")
            set_(self, "layout_map", tuple(tuple(int(v) for v in row) for row in arr))
        elif self.layout_map is not None:
            raise ConfigError(f"layout_map is only used by layout='map', not {self.layout!r}")
        # a scale the sampler cannot draw would refuse every frame of this spec: refuse the spec instead
        from dp.noise import sampler_digits

        for name, scale in (("eps_pix", "noise_scale"), ("eps_layout", "layout_noise_scale")):
            if name == "eps_layout" and self.layout != "private":
                continue
            try:
                sampler_digits(getattr(self, scale))
            except ConfigError as exc:
                raise ConfigError(f"{name}={getattr(self, name):g} is too small for m_pixels={self.m_pixels}: "
                                  f"{exc}") from None

    # --- the privacy map -------------------------------------------------------------------------
    @property
    def sensitivity_l1(self) -> int:
        # one changed pixel position moves one cell's C sums by <= 255 each, whatever the layout (yuv420: its
        # Y sample and its 2x2 block's U and V samples, all in one cell since cells have even sizes)
        return 255 * self.m_pixels * self.channels

    @cached_property
    def noise_scale(self) -> Decimal:
        """t = sensitivity / eps_pix of the discrete Laplace noise on every cell sum, exactly."""
        return _decimal(Fraction(self.sensitivity_l1) / exact_epsilon(self.eps_pix))

    @property
    def score_channels(self) -> int:
        """Channels the private layout's detail score reads: luma only for yuv420."""
        return 1 if self.color == "yuv420" else self.channels

    @property
    def layout_sensitivity_l1(self) -> int:
        # a pixel sits in at most 4 adjacent pairs, each over the scored channels, each term clipped at G
        return 4 * self.m_pixels * self.score_channels * self.gradient_clip

    @cached_property
    def layout_noise_scale(self) -> Decimal:
        """Scale of the discrete Laplace noise on each block's integer complexity numerator."""
        if self.eps_layout == 0:
            raise ConfigError("layout_noise_scale only exists for layout='private'")
        return _decimal(Fraction(self.layout_sensitivity_l1) / exact_epsilon(self.eps_layout))

    @cached_property  # read by the ledger gate on every frame
    def eps_frame(self) -> float:
        """What one release costs: eps_layout + eps_pix."""
        return float(self.eps_frame_exact)

    @cached_property
    def eps_frame_exact(self) -> Fraction:
        return exact_epsilon(self.eps_pix) + exact_epsilon(self.eps_layout)

    def replace(self, **changes: object) -> PixelizeSpec:
        """A validated copy with some settings changed (for live configuration)."""
        current = {f: getattr(self, f) for f in self.__dataclass_fields__}
        unknown = sorted(set(changes) - set(current))
        if unknown:
            raise ConfigError(f"PixelizeSpec has no setting {', '.join(unknown)}; use {', '.join(current)}")
        if current["layout"] == "fixed" and "layout" in changes and changes["layout"] != "fixed":
            current["block_size"], current["cell_sizes"] = 32, DEFAULT_CELL_SIZES
        current.update(changes)
        return PixelizeSpec(**current)  # type: ignore[arg-type]


def _decimal(x: Fraction) -> Decimal:
    from decimal import localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(x.numerator) / Decimal(x.denominator)
