"""What the attacker sees: the same face rendering, clean, pixelized, blurred or privatized by `dp`.

`plain` pixelization and Gaussian blur are the non-private references (what anonymizers do today) at the
same cell size; `dp` runs the real `dp.Pixelizer` with real randomness (no key).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

from attacks.errors import AuditError
from dp import ConfigError, Pixelizer, PixelizeSpec

SETTING_KINDS = ("clean", "pixelize", "blur", "dp")
# Layouts of the dp setting: "fixed" (one cell size), "previous" (the camera default: adaptive, the layout
# read from the previous release of the same scene) and "private" (adaptive, a noisy layout of this frame).
DP_LAYOUTS = ("fixed", "previous", "private")


@dataclass(frozen=True)
class Setting:
    """One condition of the attack. `cell_size` is None for clean and for adaptive dp layouts."""

    kind: str
    cell_size: int | None = None
    eps_pix: float | None = None
    m_pixels: int | None = None
    layout: str | None = None
    eps_layout: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SETTING_KINDS:
            raise AuditError(f"setting kind {self.kind!r} is unknown; use one of {', '.join(SETTING_KINDS)}")
        if self.kind in ("pixelize", "blur") and not self.cell_size:
            raise AuditError(f"setting {self.kind!r} needs a cell size")
        if self.kind == "dp":
            if self.layout not in DP_LAYOUTS:
                raise AuditError(f"dp layout {self.layout!r} is unknown; use one of {', '.join(DP_LAYOUTS)}")
            if self.layout == "fixed" and not self.cell_size:
                raise AuditError("dp layout 'fixed' needs a cell size")

    @property
    def label(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind in ("pixelize", "blur"):
            return f"{self.kind} {self.cell_size}px"
        where = f"{self.cell_size}px" if self.layout == "fixed" else self.layout
        return f"dp eps={self.eps_pix:g} m={self.m_pixels} {where}"

    @property
    def randomized(self) -> bool:
        return self.kind == "dp"

    def spec(self) -> PixelizeSpec:
        if self.kind != "dp":
            raise AuditError(f"setting {self.label} has no PixelizeSpec")
        try:
            if self.layout == "fixed":
                return PixelizeSpec(eps_pix=self.eps_pix, m_pixels=self.m_pixels, channels=3, layout="fixed",
                                    cell_size=self.cell_size)
            return PixelizeSpec(eps_pix=self.eps_pix, m_pixels=self.m_pixels, channels=3, layout=self.layout,
                                cell_size=32, eps_layout=self.eps_layout)
        except ConfigError as exc:
            raise AuditError(f"setting {self.label}: {exc}") from exc


def pixelize_plain(image: np.ndarray, cell_size: int) -> np.ndarray:
    """Non-private pixelization: every cell (border cells partial) filled with its exact mean."""
    h, w, c = image.shape
    out = np.empty_like(image)
    for y in range(0, h, cell_size):
        for x in range(0, w, cell_size):
            cell = image[y : y + cell_size, x : x + cell_size].reshape(-1, c)
            out[y : y + cell_size, x : x + cell_size] = np.round(cell.mean(axis=0)).astype(np.uint8)
    return out


def blur_gaussian(image: np.ndarray, cell_size: int) -> np.ndarray:
    """Gaussian blur with a standard deviation of half the cell size (a kernel about two cells wide)."""
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=cell_size / 2)))


@lru_cache(maxsize=64)
def _spec(setting: Setting) -> PixelizeSpec:
    return setting.spec()


def _releases(setting: Setting, image: np.ndarray, k: int):
    """k consecutive releases of a still scene by one camera's Pixelizer."""
    px = Pixelizer(_spec(setting), backend="cpu")
    if setting.layout == "previous":
        # the first release only sets the layout of the next one; the attacker sees the ones after it
        px.release(image)
    for _ in range(k):
        yield px.release(image).reconstruct()


def privatize(setting: Setting, image: np.ndarray, k: int = 1) -> np.ndarray:
    """The image the attacker gets under `setting`. For dp with k > 1 (the multi-frame attacker) it is the
    mean of k independent releases of the same still face."""
    if setting.kind == "clean":
        return image
    if setting.kind == "pixelize":
        return pixelize_plain(image, setting.cell_size)
    if setting.kind == "blur":
        return blur_gaussian(image, setting.cell_size)
    if k == 1:
        return next(_releases(setting, image, 1))
    acc = np.zeros(image.shape, dtype=np.float64)
    for frame in _releases(setting, image, k):
        acc += frame
    return np.clip(np.round(acc / k), 0, 255).astype(np.uint8)
