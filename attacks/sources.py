"""Face photos that ship inside public packages, fetched with the registries' own clients.

No face data set is downloaded from a hub and none is committed: the photos come from three package
archives (PyPI sdists and an npm tarball), pinned by version and SHA-256, fetched once into a cache
directory by `python -m attacks faces fetch` (run by `scripts/setup`) and read from the archives in place.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from attacks.errors import AuditError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackageSource:
    """One package archive and which of its members are photos of faces."""

    name: str
    client: str  # "pip" (an sdist from PyPI) or "npm" (a tarball from the npm registry)
    requirement: str
    filename: str
    sha256: str
    members: tuple[str, ...]  # archive member paths of the photos we use


SOURCES: tuple[PackageSource, ...] = (
    # The face_recognition test photos: one identity (Obama) in several distinct photos, plus Biden.
    # 32bit.png is obama2.jpg re-encoded, so it is left out (it would leak a probe into the gallery).
    PackageSource(
        name="face_recognition",
        client="pip",
        requirement="face-recognition==1.3.0",
        filename="face_recognition-1.3.0.tar.gz",
        sha256="5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        members=tuple(
            f"face_recognition-1.3.0/tests/test_images/{n}"
            for n in ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg")
        ),
    ),
    # The face-api demo: six group photos, about twenty people.
    PackageSource(
        name="face-api",
        client="npm",
        requirement="@vladmandic/face-api@1.7.15",
        filename="vladmandic-face-api-1.7.15.tgz",
        sha256="0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031",
        members=tuple(f"package/demo/sample{i}.jpg" for i in range(1, 7)),
    ),
    # insightface's sample images: a group photo of six and one aligned face.
    PackageSource(
        name="insightface",
        client="pip",
        requirement="insightface==2.1",
        filename="insightface-2.1.tar.gz",
        sha256="776cbd36b70f5f2ae1a026101cfb80387f0b2280a0dbaf073f8d3ed69f554e01",
        members=(
            "insightface-2.1/insightface/data/images/t1.jpg",
            "insightface-2.1/insightface/data/images/Tom_Hanks_54745.png",
        ),
    ),
)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "dpstream"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch_one(source: PackageSource, dest_dir: Path, timeout_s: float) -> None:
    if source.client == "pip":
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            "--dest", str(dest_dir), source.requirement,
        ]
    elif source.client == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise AuditError(f"fetching {source.requirement} needs npm; install Node.js and npm (apt-get install npm)")
        cmd = [npm, "pack", "--silent", "--pack-destination", str(dest_dir), source.requirement]
    else:  # pragma: no cover - the table above is the only input
        raise AuditError(f"unknown package client {source.client!r}")
    log.info("fetching %s with %s", source.requirement, source.client)
    try:
        subprocess.run(cmd, check=True, timeout=timeout_s, capture_output=True)
    except subprocess.CalledProcessError as exc:
        raise AuditError(
            f"could not fetch {source.requirement}: {exc.stderr.decode(errors='replace')[-400:]}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise AuditError(f"fetching {source.requirement} took over {timeout_s:.0f} s") from exc


def archive_dir(cache_dir: Path) -> Path:
    return cache_dir / "face-sources"


def fetch_sources(cache_dir: Path, *, timeout_s: float = 300.0) -> list[Path]:
    """Make sure every source archive is in the cache with the pinned hash; fetch the missing ones."""
    dest = archive_dir(cache_dir)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in SOURCES:
        path = dest / source.filename
        if not path.exists() or _sha256(path) != source.sha256:
            path.unlink(missing_ok=True)
            _fetch_one(source, dest, timeout_s)
        if not path.exists():
            raise AuditError(f"{source.requirement} was fetched but {path} is missing")
        digest = _sha256(path)
        if digest != source.sha256:
            raise AuditError(f"{path} has SHA-256 {digest}, expected {source.sha256} for {source.requirement}")
        paths.append(path)
    return paths


@dataclass(frozen=True)
class SourcePhoto:
    """A photo read from a package archive: `origin` is `package:member-name`."""

    origin: str
    pixels: np.ndarray  # HxWx3 uint8 RGB


def iter_source_photos(cache_dir: Path) -> Iterator[SourcePhoto]:
    """Every photo of every source, read straight out of the cached archives."""
    fetch_sources(cache_dir)
    for source in SOURCES:
        path = archive_dir(cache_dir) / source.filename
        with tarfile.open(path, "r:gz") as tar:
            for member in source.members:
                f = tar.extractfile(member)
                if f is None:
                    raise AuditError(f"{path} has no member {member}")
                with Image.open(io.BytesIO(f.read())) as im:
                    pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
                yield SourcePhoto(origin=f"{source.name}:{Path(member).name}", pixels=pixels)
