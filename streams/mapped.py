"""Numpy views of GStreamer's own buffer memory, without a copy: decoded frames in, encoder input out.

PyGObject's ``Gst.Buffer.map`` hands Python a ``bytes`` copy of the memory. At 1080p that copy costs about
0.4 ms of CPU per frame (3 MB of fresh pages to fault in and fill), a third of what the worker adds to
decoding. :func:`read_view` maps the buffer itself through libgstreamer's C API (``gst_buffer_map``) and
returns a numpy array over the mapped memory. The array's base is a :class:`MappedBuffer`, which holds a
reference to the buffer and unmaps it when the last view of it is gone, so the memory stays valid (and is
not handed back to the decoder's pool) for exactly as long as some array can read it. The view is read-only:
the decoder may still use the same picture as a reference frame.

The C pointer of a ``Gst.Buffer`` comes from PyGObject's boxed wrapper, which keeps it right after the
Python object header. :func:`read_view` only trusts it after checking, once per process, that it matches the
wrapper's ``hash()`` (PyGObject hashes boxed values by their pointer) and that libgstreamer reports the
buffer's size from it. If any of this does not hold (another PyGObject, no ``libgstreamer-1.0.so.0`` for
ctypes), frames are copied as before: slower, never wrong.

The other direction, :func:`filled_buffer`, gives a writer a new buffer's memory to fill in place (a privatized
frame reconstructed straight into what the encoder reads), instead of ``ndarray.tobytes()`` and then
``Gst.Buffer.new_wrapped``, which copies those bytes once more.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable

import numpy as np

from dp.errors import IngestError

from .gst import Gst, ensure_init

log = logging.getLogger(__name__)

__all__ = ["MappedBuffer", "filled_buffer", "read_view", "zero_copy_available"]

_GST_MAP_READ = 1
_GST_MAP_WRITE = 2


class _MapInfo(ctypes.Structure):
    """``GstMapInfo`` (gst/gstmemory.h, unchanged since GStreamer 1.0)."""

    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


def _load_gstreamer():
    try:
        lib = ctypes.CDLL("libgstreamer-1.0.so.0")
    except OSError:
        return None
    lib.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo), ctypes.c_int]
    lib.gst_buffer_map.restype = ctypes.c_int
    lib.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(_MapInfo)]
    lib.gst_buffer_unmap.restype = None
    lib.gst_buffer_get_size.argtypes = [ctypes.c_void_p]
    lib.gst_buffer_get_size.restype = ctypes.c_size_t
    return lib


_LIB = None  # libgstreamer through ctypes, loaded by the first check: not at import (see _trust_pointers)
_POINTER_OFFSET = object.__basicsize__  # PyGBoxed: PyObject_HEAD, then the boxed pointer
_checked: bool | None = None  # None: not yet checked; then whether zero-copy mapping is trusted
_check_lock = threading.Lock()


def _boxed_pointer(buf: Gst.Buffer) -> int:
    return ctypes.c_void_p.from_address(id(buf) + _POINTER_OFFSET).value or 0


def _trust_pointers(buf: Gst.Buffer) -> bool:
    """Whether this process's PyGObject gives ``Gst.Buffer`` pointers the way this module reads them."""
    global _checked, _LIB
    with _check_lock:
        if _checked is None:
            _checked = False
            # loaded once frames flow, not at import: nothing in streams touches GStreamer at import time (a
            # test process that did saw dlib abort later, the trap attacks/dlib_model.py describes)
            _LIB = _load_gstreamer()
            if _LIB is None:
                log.info("libgstreamer-1.0.so.0 not loadable with ctypes: decoded frames are copied")
            else:
                pointer = _boxed_pointer(buf)
                # the wrapper's own memory agrees with its hash before anything is read through the pointer
                if pointer and pointer == hash(buf) & (2**64 - 1) and _LIB.gst_buffer_get_size(pointer) == buf.get_size():
                    _checked = True
                else:
                    log.info("this PyGObject keeps Gst.Buffer pointers elsewhere: decoded frames are copied")
        return _checked


def zero_copy_available() -> bool:
    """Whether :func:`read_view` maps buffers in place in this process (checked on a probe buffer)."""
    if _checked is None:
        ensure_init()
        _trust_pointers(Gst.Buffer.new_wrapped(b"\0" * 16))
    return bool(_checked)


class MappedBuffer:
    """One ``Gst.Buffer`` mapped for reading, for as long as this object (the base of its views) lives."""

    __slots__ = ("__array_interface__", "__weakref__", "_buffer", "_info", "_pointer", "_unmap")

    def __init__(self, buf: Gst.Buffer) -> None:
        pointer = _boxed_pointer(buf)
        info = _MapInfo()
        if not _LIB.gst_buffer_map(pointer, ctypes.byref(info), _GST_MAP_READ):
            raise IngestError("could not map a decoded frame's memory")
        self._buffer = buf  # our reference: the memory is not recycled while mapped
        self._pointer = pointer
        self._unmap = _LIB.gst_buffer_unmap  # kept: module globals may already be gone when the last view dies
        self._info = info
        self.__array_interface__ = {
            "shape": (int(info.size),),
            "typestr": "|u1",
            "data": (int(info.data or 0), True),  # read-only
            "version": 3,
        }

    def __del__(self) -> None:
        info = getattr(self, "_info", None)
        if info is not None:
            self._info = None
            self._unmap(self._pointer, ctypes.byref(info))  # then the slot's reference to the buffer goes


def _copied(buf: Gst.Buffer) -> np.ndarray:
    # map().data copies at memcpy speed, while extract_dup goes through PyGObject's per-element array
    # marshalling (4.7 ms against 0.1 ms at 1080p)
    ok, info = buf.map(Gst.MapFlags.READ)
    if not ok:
        raise IngestError("could not map a decoded frame's memory")
    try:
        return np.frombuffer(info.data, dtype=np.uint8)
    finally:
        buf.unmap(info)


def read_view(buf: Gst.Buffer) -> np.ndarray:
    """The buffer's bytes as a read-only 1-D uint8 array: a view of the mapped buffer when this process
    allows it (:func:`zero_copy_available`), else a copy."""
    if buf.get_size() == 0:
        return np.empty(0, dtype=np.uint8)
    if _checked or (_checked is None and _trust_pointers(buf)):
        return np.asarray(MappedBuffer(buf))
    return _copied(buf)


class _Region:
    """A writable numpy interface over a mapped buffer's memory; holds the buffer so the memory outlives any
    stray view (it is unmapped, and the view made read-only, when the fill returns)."""

    __slots__ = ("__array_interface__", "_buffer")

    def __init__(self, buf: Gst.Buffer, info: _MapInfo) -> None:
        self._buffer = buf
        self.__array_interface__ = {"shape": (int(info.size),), "typestr": "|u1",
                                    "data": (int(info.data or 0), False), "version": 3}


def filled_buffer(size: int, fill: Callable[[np.ndarray], object]) -> Gst.Buffer:
    """A new ``Gst.Buffer`` of ``size`` bytes, written by ``fill(view)``: ``view`` is a writable 1-D uint8 array
    over the buffer's own memory (a scratch array copied in once where :func:`zero_copy_available` is False),
    valid only during the call."""
    if size <= 0:
        raise ValueError(f"a buffer of {size} bytes")
    if not zero_copy_available():
        scratch = np.empty(size, dtype=np.uint8)
        fill(scratch)
        return Gst.Buffer.new_wrapped(scratch.tobytes())
    buf = Gst.Buffer.new_allocate(None, size, None)
    if buf is None:
        raise MemoryError(f"GStreamer could not allocate a {size}-byte buffer")
    pointer = _boxed_pointer(buf)
    info = _MapInfo()
    if not _LIB.gst_buffer_map(pointer, ctypes.byref(info), _GST_MAP_WRITE):
        raise MemoryError("could not map a new buffer for writing")
    view = np.asarray(_Region(buf, info))
    try:
        fill(view)
    finally:
        view.flags.writeable = False
        _LIB.gst_buffer_unmap(pointer, ctypes.byref(info))
    return buf
