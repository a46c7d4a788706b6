"""Releases to pictures: JPEG of the reconstruction (each cell filled with its noisy mean).

Only already-private releases come in here; re-encoding them is post-processing and costs no privacy.
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from threading import Lock

from PIL import Image


def release_to_jpeg(data: bytes, *, quality: int = 85) -> bytes:
    from dp import Release

    img = Release.from_bytes(data).reconstruct()
    mode = "L" if img.ndim == 2 or img.shape[2] == 1 else "RGB"
    pil = Image.fromarray(img.reshape(img.shape[0], img.shape[1]) if mode == "L" else img, mode=mode)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class LatestCache:
    """The latest release bytes per camera, kept for `max_age_s` (default 20 ms).

    Many clients polling the latest release share one Redis read per camera per `max_age_s`; a reader sees
    a new release at most that much later than it lands (releases come every 1/release_fps, typically
    100 ms or more). Misses are cached too, so polling an empty camera is also cheap.
    """

    def __init__(self, max_age_s: float = 0.02) -> None:
        self._max_age_s = max_age_s
        self._items: dict[str, tuple[float, bytes | None]] = {}

    async def get(self, camera_id: str, load) -> bytes | None:
        now = time.monotonic()
        hit = self._items.get(camera_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        data = await load(camera_id)
        if len(self._items) > 10_000:
            self._items.clear()
        self._items[camera_id] = (now + self._max_age_s, data)
        return data


class JpegCache:
    """A few recent JPEGs keyed by (camera, stream entry id): many viewers share one encode."""

    def __init__(self, size: int = 64) -> None:
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def get(self, camera_id: str, entry_id: str, data: bytes) -> bytes:
        key = (camera_id, entry_id)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        jpeg = release_to_jpeg(data)
        with self._lock:
            self._items[key] = jpeg
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return jpeg
