"""dp: region-adaptive, differentially private pixelization. Pure computation, no I/O.

    from dp import PixelizeSpec, Pixelizer, Release, Ledger
    px = Pixelizer(PixelizeSpec(eps_pix=1.0, m_pixels=16, channels=3, layout="fixed", cell_size=16))
    rel = px.release(frame)        # eps_frame-DP for frames differing in at most m_pixels positions
"""

from dp.color import rgb_to_i420
from dp.errors import (
    BackendUnavailable,
    BudgetExhausted,
    ConfigError,
    DpstreamError,
    FrameError,
    IngestError,
    ReleaseFormatError,
    StoreUnavailable,
)
from dp.ledger import Ledger
from dp.pixelizer import Pixelizer
from dp.release import Release
from dp.spec import LAYOUT_MODES, PixelizeSpec

__all__ = [
    "LAYOUT_MODES",
    "BackendUnavailable",
    "BudgetExhausted",
    "ConfigError",
    "DpstreamError",
    "FrameError",
    "IngestError",
    "Ledger",
    "PixelizeSpec",
    "Pixelizer",
    "Release",
    "ReleaseFormatError",
    "StoreUnavailable",
    "rgb_to_i420",
]
