"""Request and response models of the REST API, and the camera configuration stored in Redis.

Every model forbids unknown fields (a typo fails loudly) and gives bounds and units. The camera model maps
onto `dp.PixelizeSpec` and `dp.Ledger`; `dp` stays the judge of what a valid spec is, and its
`ConfigError` comes back to the client as a 422 naming the field (see `camera_config_error`).
"""

from __future__ import annotations

import math
import re
import secrets
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    field_validator,
    model_validator,
)

from service.redaction import redact_url

SLUG_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
ENTRY_ID_PATTERN = r"^[0-9]{1,19}-[0-9]{1,19}$"  # 19 digits stay below 2**64, the largest id part
HealthState = Literal["STARTING", "STREAMING", "STALLED", "RECONNECTING", "FAILED", "DISABLED", "UNASSIGNED"]
HEALTH_STATES: tuple[str, ...] = HealthState.__args__  # type: ignore[attr-defined]


class Model(BaseModel):
    """The one base of every service model: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


def new_camera_id() -> str:
    return "cam-" + secrets.token_hex(4)


def new_incarnation() -> str:
    return secrets.token_hex(8)


MAX_MAP_BLOCKS = 1 << 16  # every camera config is read on each listing: a map stays a few hundred kB


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):  # True == 1 would pass Literal[1, 3]: a grey camera by accident
        raise ValueError("give the number 1 or 3, not a boolean")
    return v


class StrictModel(Model):
    """A camera's settings take JSON's own types: `"channels": true` or `"eps_pix": "1.5"` is an error, not
    a guess (a client that sends them has a bug that would otherwise choose a privacy setting). NaN and
    infinities are refused as such, not by a bound they happen to fail."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class CameraSettings(StrictModel):
    """What a camera releases and at what privacy cost. All of it can change live (PATCH)."""

    enabled: bool = Field(default=True, description="False stops the camera (state DISABLED) but keeps it.")
    channels: Annotated[Literal[1, 3], BeforeValidator(_not_bool)] = Field(
        default=3, description="Released channels: 3 (RGB) or 1 (grey).")
    color: Literal["rgb", "yuv420"] = Field(
        default="rgb",
        description="rgb, or yuv420: release the decoder's planar YUV 4:2:0 as it is (no colour conversion; "
        "the same guarantee, noisier colour: chroma means average a quarter of the samples; needs channels 3, "
        "even cell sizes and even frame sizes).",
    )
    eps_pix: float = Field(
        default=1.0, gt=0, le=1e4,
        description="Epsilon spent on the cell means of one release (dimensionless, per frame).",
    )
    m_pixels: int = Field(
        default=16, ge=1, le=1 << 20,
        description=(
            "Threat-model setting, not a quality knob: the largest thing protected, in pixel positions at "
            "the camera's working distance (a face, a licence plate). Frames that differ in at most this "
            "many pixels are indistinguishable up to eps. Raising it adds noise; lowering it weakens the "
            "guarantee."
        ),
    )
    layout: Literal["fixed", "map", "previous", "private"] = Field(
        default="previous",
        description="How cells are chosen: fixed size, an operator map, the previous release (the default: "
        "adaptive at no privacy cost, never worse than the best fixed size for RGB and within 0.2 dB of it for "
        "yuv420 in docs/benchmarks.md), or a "
        "noisy per-frame complexity (private, costs eps_layout).",
    )
    cell_size: int = Field(default=16, ge=1, le=1024, description="Cell side in pixels (fixed layout; the "
                           "starting size of adaptive layouts).")
    cell_sizes: list[int] = Field(
        default_factory=lambda: [4, 8, 16, 32], min_length=1, max_length=16,
        description="Candidate cell sides in pixels for adaptive layouts; each divides block_size.",
    )
    block_size: int = Field(default=32, ge=1, le=256, description="Macro-block side in pixels (adaptive "
                            "layouts).")
    gradient_clip: int = Field(default=32, ge=1, le=255, description="G: neighbour differences are clipped "
                               "at this many grey levels in the complexity score (adaptive layouts; public).")
    detail_gain: float = Field(default=0.25, gt=0, le=100, description="Weight of detail against noise when "
                               "choosing cell sizes (adaptive layouts; public, dimensionless).")
    eps_layout: float = Field(default=0.0, ge=0, le=1e4, description="Epsilon spent on choosing the layout "
                              "(layout=private only, else 0).")
    layout_map: list[list[int]] | None = Field(
        default=None, max_length=4096,
        description="layout=map only: one cell size (pixels) per macro-block, row-major.",
    )
    release_fps: float = Field(default=1.0, gt=0, le=120, description="Releases per second at most "
                               "(frames/s).")
    eps_window: float = Field(
        default=10.0, gt=0, le=1e4,
        description="Epsilon budget of any sliding window of window_s seconds; a frame that would overspend "
        "is not released (the last release repeats).",
    )
    window_s: float = Field(default=10.0, gt=0, le=86_400 * 30, description="Length of the budget window "
                            "in seconds.")
    retention_releases: int = Field(default=1000, ge=1, le=1_000_000, description="Releases kept per camera "
                                    "in Redis (older ones are trimmed).")
    retention_s: float | None = Field(default=3600.0, gt=0, le=86_400 * 365, description="Seconds a release "
                                      "is kept in Redis (null: only retention_releases applies).")

    @field_validator("cell_sizes")
    @classmethod
    def _sizes_positive(cls, v: list[int]) -> list[int]:
        if any(s < 1 or s > 256 for s in v):
            raise ValueError("every cell size must be between 1 and 256 pixels")
        return v

    @field_validator("layout_map")
    @classmethod
    def _map_rows(cls, v: list[list[int]] | None) -> list[list[int]] | None:
        if v is not None and any(len(row) > 4096 for row in v):
            raise ValueError("layout_map rows hold at most 4096 macro-blocks")
        if v is not None and sum(len(row) for row in v) > MAX_MAP_BLOCKS:
            raise ValueError(f"layout_map holds at most {MAX_MAP_BLOCKS} macro-blocks (an 8K frame in 32 px "
                             "blocks has 34,560)")
        return v


SOURCE_DESCRIPTION = (
    "Camera URI: rtsp://, rtsps://, file:// or a test pattern such as test:ball?width=160&height=120&fps=10. "
    "Credentials in the URI are used by the worker and never returned (responses show ***)."
)


class CameraCreate(CameraSettings):
    """A new camera: a source and, optionally, its id."""

    id: str | None = Field(default=None, pattern=SLUG_PATTERN, description="Slug; generated when absent.")
    source: str = Field(min_length=3, max_length=2048, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$",
                        description=SOURCE_DESCRIPTION)


class Camera(CameraCreate):
    """A camera as stored and returned."""

    id: str = Field(pattern=SLUG_PATTERN, description="Slug naming the camera.")
    version: int = Field(default=1, ge=1, description="Incremented by every change; workers apply the latest.")
    incarnation: str = Field(default="", max_length=64, description="Set when the camera is created. A camera "
                             "deleted and created again under its id is a new one (its version starts at 1 "
                             "again): workers apply it whatever the version they ran.")

    def public(self) -> Camera:
        """This camera with credentials taken out of its source, for responses and logs."""
        return self.model_copy(update={"source": redact_url(self.source)})

    def spec_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(
            eps_pix=self.eps_pix, m_pixels=self.m_pixels, channels=self.channels, color=self.color,
            layout=self.layout, cell_size=self.cell_size, eps_layout=self.eps_layout,
            gradient_clip=self.gradient_clip, detail_gain=self.detail_gain,
        )
        if self.layout != "fixed":
            kwargs.update(cell_sizes=tuple(self.cell_sizes), block_size=self.block_size)
        if self.layout_map is not None:
            kwargs["layout_map"] = tuple(tuple(r) for r in self.layout_map)
        return kwargs

    def to_spec(self):  # -> dp.PixelizeSpec
        """The dp spec of this camera; raises `dp.ConfigError` (naming the field) when dp refuses it."""
        from dp import ConfigError, PixelizeSpec
        from dp.spec import exact_epsilon

        spec = PixelizeSpec(**self.spec_kwargs())
        self.new_ledger()  # dp validates the window too
        # exact decimals, as the ledger counts them: eps_pix=0.1 + eps_layout=0.2 fits eps_window=0.3
        if spec.eps_frame_exact > exact_epsilon(self.eps_window):
            raise ConfigError(
                f"eps_window={self.eps_window} is below one release's cost eps_frame={spec.eps_frame:g} "
                f"(eps_pix + eps_layout); raise eps_window or lower eps_pix"
            )
        return spec

    def new_ledger(self):  # -> dp.Ledger
        from dp import Ledger

        return Ledger(eps_window=self.eps_window, window_s=self.window_s)


# the fields where a PATCH's null is a value (no map; no age limit); elsewhere null means "unchanged"
PATCH_NULLABLE = ("layout_map", "retention_s")


def _patch_model() -> type[Model]:
    fields: dict[str, Any] = {}
    for name, info in CameraSettings.model_fields.items():
        # keep the bounds of the full model (`Annotated[T, *bounds] | None`), so PATCH rejects what POST does
        bounded = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        null = "sets it to null" if name in PATCH_NULLABLE else "keeps the current value, as leaving it out does"
        fields[name] = (bounded | None, Field(default=None, description=f"{info.description} In a PATCH, null "
                                              f"{null}."))
    fields["source"] = (str | None, Field(default=None, min_length=3, max_length=2048,
                                          pattern=r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$",
                                          description=f"{SOURCE_DESCRIPTION} In a PATCH, null keeps the "
                                          "current source."))
    fields["incarnation"] = (str | None, Field(default=None, max_length=64, description="Accepted only as GET "
                                               "returned it (a GET-edit-PATCH round trip); it never changes."))
    fields["id"] = (str | None, Field(default=None, max_length=64, description="Accepted only as the camera's "
                                      "own id (a GET-edit-PATCH round trip); the id never changes."))
    fields["version"] = (int | None, Field(default=None, ge=1, description="The version your change is based on "
                                           "(as GET returned it): the PATCH applies only while the camera is "
                                           "still at that version, else 409, so two editors never overwrite "
                                           "each other unseen. Left out: applies to the current version."))
    return create_model("CameraPatch", __base__=StrictModel, **fields)


CameraPatch = _patch_model()
CameraPatch.__doc__ = (f"Fields to change; absent fields keep their value, and so do fields given as null, "
                       f"except {' and '.join(PATCH_NULLABLE)}, where null is a value. The id cannot change; a "
                       f"PATCH that changes nothing writes nothing (the version stays).")

_FIELD_NAMES = tuple(sorted(set(Camera.model_fields) | {"eps_frame"}, key=len, reverse=True))


def camera_config_error(err: Exception) -> dict[str, Any]:
    """A `dp.ConfigError` as one FastAPI-style validation error naming the camera field at fault."""
    msg = str(err)
    field = None
    needs = re.search(r"\bneeds ([a-z_]+)", msg)  # "layout='map' needs layout_map": the fix is layout_map
    m = re.match(r"\s*([a-z_]+)\s*[=\s]", msg)
    if needs and needs.group(1) in _FIELD_NAMES:
        field = needs.group(1)
    elif m and m.group(1) in _FIELD_NAMES:
        field = m.group(1)
    else:
        for name in _FIELD_NAMES:
            if re.search(rf"\b{name}\b", msg):
                field = name
                break
    if field == "eps_frame":
        field = "eps_window"
    return {"loc": ["body", field or "camera"], "msg": msg, "type": "config_error"}


class ErrorOut(Model):
    detail: str = Field(description="What went wrong and what to do about it.")


class Guarantee(Model):
    eps_window: float = Field(description="Epsilon of any window of window_s seconds.")
    m_pixels: int = Field(description="Pixel positions protected (threat model).")
    window_s: float = Field(description="Window length in seconds.")


class Budget(Model):
    camera_id: str
    eps_spent: float = Field(description="Epsilon spent in the current window.")
    eps_remaining: float = Field(description="Epsilon left in the current window.")
    eps_frame: float = Field(description="Cost of one release.")
    guarantee: Guarantee
    as_of_s: float = Field(description="Unix time (seconds) of this reading.")


class CameraStatus(Model):
    id: str
    state: HealthState
    reason: str | None = Field(default=None, description="Why the camera is in this state (credentials "
                               "redacted).")
    last_error: str | None = Field(default=None, description="The last error (stall, reconnect, failure) "
                                   "since the worker took the camera, credentials redacted.")
    last_error_s: float | None = Field(default=None, description="Unix time of last_error.")
    fps: float = Field(default=0.0, description="Frames ingested per second (recent).")
    release_fps: float = Field(default=0.0, description="Releases per second (recent).")
    frames_ingested: int = 0
    frames_released: int = 0
    frames_dropped: int = Field(default=0, description="Frames dropped by the full ingest queue.")
    frames_skipped: int = Field(default=0, description="Frames skipped to keep to release_fps.")
    frames_over_budget: int = Field(default=0, description="Frames not released because the window's "
                                    "budget was spent (the previous release repeats).")
    frames_rejected: int = Field(default=0, description="Frames dp refused for their size or the settings "
                                 "(a layout map of another shape, say); their budget is given back. Every "
                                 "frame refused for the stall timeout makes the camera FAILED.")
    rejected_reason: str | None = Field(default=None, description="Why the latest of them was refused.")
    reconnects: int = 0
    worker: str | None = Field(default=None, description="Worker that holds the camera's lease.")
    private_rtsp: str | None = Field(default=None, description="RTSP URL re-streaming the releases as H.264 "
                                     "(when the worker runs an RTSP server).")
    updated_s: float | None = Field(default=None, description="Unix time of the worker's last report.")


class ReleaseSummary(Model):
    entry_id: str = Field(description="Redis Stream entry id (use as `since`).")
    camera_id: str
    frame_index: int
    timestamp_s: float
    height: int
    width: int
    channels: int
    layout: str
    eps_spent: float
    size_bytes: int


class AuditParams(Model):
    """What an audit runs with, as an audit's doc shows it (also those started when smaller audits were
    accepted: see AuditRequest for what a new audit needs)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    eps_pix: float = Field(default=1.0, gt=0, le=100, description="Epsilon of the mechanism under audit.")
    m_pixels: int = Field(default=16, ge=1, le=4096, description="Pixel positions protected (threat model).")
    cell_size: int = Field(default=16, ge=1, le=256, description="Cell side in pixels of the fixed layout.")
    channels: Literal[1, 3] = Field(default=3, description="Channels of the audited frames.")
    n_eval: int = Field(default=200_000, ge=1000, le=5_000_000, description="Releases per frame for the bound.")

    @model_validator(mode="after")
    def _runnable(self) -> AuditParams:
        # refused here, not by the audit process a moment after a 202
        if self.m_pixels > self.cell_size * self.cell_size:
            raise ValueError(f"m_pixels={self.m_pixels} does not fit in one {self.cell_size} px cell (the audit "
                             f"changes m_pixels positions of one cell); use cell_size >= "
                             f"{math.isqrt(self.m_pixels - 1) + 1} or a smaller m_pixels")
        from dp import ConfigError, PixelizeSpec

        try:
            PixelizeSpec(eps_pix=self.eps_pix, m_pixels=self.m_pixels, channels=self.channels, layout="fixed",
                         cell_size=self.cell_size)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


AUDIT_ALPHA = 0.01  # `attacks mechanism`'s default confidence is 1 - this (the API does not pass one)


class AuditRequest(AuditParams):
    """An empirical audit of the pixelization mechanism: a lower bound on its privacy loss, with confidence."""

    # 20,000 flagged the half-noise control in 230 of 230 runs at eps_pix=1 (1,000: 62 of 80; 5,000: 225 of
    # 230; 10,000: 228 of 230), for about 0.5 s more per audit than 1,000: below it a pass says little
    n_eval: int = Field(default=200_000, ge=20_000, le=5_000_000, description="Releases per frame for the "
                        "bound (more: tighter bound, longer run; at least 20,000, which reliably flags the "
                        "broken control at eps_pix=1; eps_pix must stay under the largest bound it can show, "
                        "about ln(n_eval / 5.3): 10.5 at the default).")

    @model_validator(mode="after")
    def _auditable(self) -> AuditRequest:
        # `attacks mechanism` refuses a claim no outcome of n_eval samples could disprove (its
        # max_detectable_eps, at its default confidence 0.99): refused here too, not after a 202
        q = (AUDIT_ALPHA / 2) ** (1 / self.n_eval)
        top = math.log(q / (1 - q))
        if self.eps_pix >= top:
            raise ValueError(f"eps_pix={self.eps_pix:g} cannot be audited with n_eval={self.n_eval:,}: no outcome "
                             f"can show a lower bound above {top:.2f}, so the audit could not fail; raise n_eval "
                             f"(each factor e buys about 1 more) or audit a smaller eps_pix")
        return self


class Audit(Model):
    id: str
    kind: Literal["mechanism"] = "mechanism"
    state: Literal["running", "done", "failed"]
    request: AuditParams
    started_s: float
    finished_s: float | None = None
    error: str | None = None
    passed: bool | None = Field(default=None, description="Whether the measured lower bound stays within the "
                                "claimed epsilon (null until done). Not a pass on its own: read `verdict`.")
    control_flagged: bool | None = Field(default=None, description="Whether the audit flagged its deliberately "
                                         "broken control (half the noise, the same claim); null until done. "
                                         "False: the run was too small to tell a broken mechanism from a sound "
                                         "one.")
    verdict: Literal["passed", "failed", "inconclusive"] | None = Field(
        default=None, description="`passed`: the claim held and the broken control was flagged; `failed`: the "
        "lower bound exceeds the claim; `inconclusive`: the claim held but the control was not flagged, so the "
        "run proves nothing (raise n_eval). Null until done.")
    report: dict[str, Any] | None = None


class Health(Model):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
