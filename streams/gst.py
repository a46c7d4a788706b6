"""The GStreamer edge: one place that imports PyGObject, initialises GStreamer and translates its errors.

Everything else in ``streams/`` imports ``Gst`` (and friends) from here, so ``Gst.init`` runs exactly once
and a missing plugin or a GLib error surfaces as a :class:`dp.IngestError` (or :class:`dp.ConfigError`),
never as a ``gi`` class.
"""

from __future__ import annotations

import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstVideo", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gio, GLib, Gst, GstApp, GstRtspServer, GstVideo  # noqa: E402

from dp.errors import ConfigError, IngestError  # noqa: E402

from .redact import redact_text  # noqa: E402

__all__ = [
    "Gio",
    "GLib",
    "Gst",
    "GstApp",
    "GstRtspServer",
    "GstVideo",
    "ensure_init",
    "make_element",
    "parse_pipeline",
    "set_state_or_raise",
    "shutdown_pipeline",
]

_init_lock = threading.Lock()
_initialised = False


def ensure_init() -> None:
    """Initialise GStreamer once per process (thread-safe, cheap after the first call)."""
    global _initialised
    if _initialised:
        return
    with _init_lock:
        if not _initialised:
            Gst.init(None)
            _initialised = True


def make_element(factory: str, name: str | None = None, **props: object) -> Gst.Element:
    """Create one element, or raise :class:`ConfigError` naming the plugin that is missing.

    ``ElementFactory.make`` returns ``None`` (it does not raise) when a plugin is not installed.
    Property names use underscores here (``speed_preset``) and are passed with dashes to GStreamer.
    """
    ensure_init()
    element = Gst.ElementFactory.make(factory, name)
    if element is None:
        raise ConfigError(
            f"GStreamer element {factory!r} is not available; install the GStreamer plugin that provides it "
            "(scripts/setup installs gstreamer1.0-plugins-{base,good,bad,ugly} and gstreamer1.0-libav)"
        )
    for key, value in props.items():
        element.set_property(key.replace("_", "-"), value)
    return element


def parse_pipeline(description: str) -> Gst.Pipeline:
    """Build a pipeline from a ``gst-launch`` description; translate GLib errors to :class:`ConfigError`.

    Descriptions never carry URLs or credentials (callers set ``location`` as a property afterwards), so
    the description may appear in the error message.
    """
    ensure_init()
    try:
        element = Gst.parse_launch(description)
    except GLib.Error as exc:
        raise ConfigError(f"cannot build GStreamer pipeline: {redact_text(exc.message)}") from None
    if not isinstance(element, Gst.Pipeline):
        pipeline = Gst.Pipeline.new(None)
        pipeline.add(element)
        return pipeline
    return element


def set_state_or_raise(pipeline: Gst.Element, state: Gst.State, what: str, *, secrets: tuple[str, ...] = ()) -> None:
    """Request a state change; raise :class:`IngestError` when GStreamer refuses it immediately.

    ``secrets``: the source's credentials (:func:`streams.redact.url_secrets`), masked in the error too where
    GStreamer's message quotes them outside a URL."""
    result = pipeline.set_state(state)
    if result == Gst.StateChangeReturn.FAILURE:
        detail = _first_bus_error(pipeline, secrets)
        raise IngestError(f"{what}: could not start the GStreamer pipeline{': ' + detail if detail else ''}")


def _first_bus_error(pipeline: Gst.Element, secrets: tuple[str, ...] = ()) -> str:
    bus = pipeline.get_bus()
    if bus is None:
        return ""
    msg = bus.pop_filtered(Gst.MessageType.ERROR)
    if msg is None:
        return ""
    err, _debug = msg.parse_error()
    return redact_text(err.message, *secrets)


def shutdown_pipeline(pipeline: Gst.Element | None, timeout_s: float = 5.0) -> None:
    """Bring a pipeline back to NULL and wait for it, so no streaming thread outlives its owner."""
    if pipeline is None:
        return
    pipeline.set_state(Gst.State.NULL)
    # NULL is reached synchronously for most elements; waiting makes sure rtspsrc has torn down its tasks.
    pipeline.get_state(int(timeout_s * Gst.SECOND))
