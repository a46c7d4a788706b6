"""dlib's HOG face detector, 5-point landmarks and 128-d ResNet face descriptor.

The weights ship inside the `face-recognition-models` package, so nothing is downloaded. dlib must be
first used in a process that has not initialised GStreamer (it aborts there), which is why every audit
runs as `python -m attacks` in its own process.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from attacks.errors import AuditError

# A face box as (left, top, right, bottom) in pixels.
Box = tuple[float, float, float, float]

DESCRIPTOR_DIM = 128


def _model_paths() -> tuple[str, str]:
    try:
        with warnings.catch_warnings():
            # face_recognition_models still imports pkg_resources (needs setuptools<82)
            warnings.simplefilter("ignore")
            import face_recognition_models as frm
    except ImportError as exc:
        raise AuditError(
            "the face attack needs the 'audit' extra: pip install -e '.[audit]' "
            "(dlib-bin, face-recognition-models, setuptools<82)"
        ) from exc
    return frm.pose_predictor_five_point_model_location(), frm.face_recognition_model_location()


@dataclass
class DlibFaces:
    """Loads the models once; every method takes HxWx3 uint8 RGB images."""

    @cached_property
    def _dlib(self):
        try:
            import dlib
        except ImportError as exc:
            raise AuditError("the face attack needs dlib: pip install dlib-bin") from exc
        return dlib

    @cached_property
    def _detector(self):
        return self._dlib.get_frontal_face_detector()

    @cached_property
    def _models(self):
        landmarks_path, descriptor_path = _model_paths()
        return self._dlib.shape_predictor(landmarks_path), self._dlib.face_recognition_model_v1(descriptor_path)

    def detect(self, image: np.ndarray, *, upsample: int = 1, min_score: float = 0.0) -> list[Box]:
        """Face boxes found by the HOG detector with a score of at least `min_score`, largest first."""
        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), upsample, min(min_score, 0.0))
        boxes = [
            (float(r.left()), float(r.top()), float(r.right()), float(r.bottom()))
            for r, score in zip(rects, scores, strict=True)
            if score >= min_score
        ]
        return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))

    def _rect(self, box: Box):
        left, top, right, bottom = (round(v) for v in box)
        return self._dlib.rectangle(left, top, right, bottom)

    def landmarks(self, image: np.ndarray, box: Box) -> np.ndarray:
        """The 5 landmark points (x, y) that the predictor finds inside `box`."""
        predictor, _ = self._models
        shape = predictor(np.ascontiguousarray(image), self._rect(box))
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)

    def _shape(self, image: np.ndarray, box: Box, points: np.ndarray | None):
        if points is None:
            predictor, _ = self._models
            return predictor(image, self._rect(box))
        parts = self._dlib.points([self._dlib.point(round(x), round(y)) for x, y in points])
        return self._dlib.full_object_detection(self._rect(box), parts)

    def describe(self, image: np.ndarray, box: Box, points: np.ndarray | None = None) -> np.ndarray:
        """The 128-d descriptor of the face in `box`, aligned by `points` (5 landmarks) when given, else by
        the landmarks the predictor finds in the image itself."""
        _, encoder = self._models
        image = np.ascontiguousarray(image)
        shape = self._shape(image, box, points)
        return np.asarray(encoder.compute_face_descriptor(image, shape), dtype=np.float64)

    def describe_many(
        self, images: list[np.ndarray], boxes: list[Box], points: list[np.ndarray | None] | None = None
    ) -> np.ndarray:
        """Descriptors of one face per image, as an (n, 128) array (batched through dlib's chip API)."""
        if not images:
            return np.zeros((0, DESCRIPTOR_DIM))
        _, encoder = self._models
        chips = []
        for i, (image, box) in enumerate(zip(images, boxes, strict=True)):
            image = np.ascontiguousarray(image)
            shape = self._shape(image, box, None if points is None else points[i])
            chips.append(self._dlib.get_face_chip(image, shape, size=150, padding=0.25))
        return np.asarray(encoder.compute_face_descriptor(chips), dtype=np.float64)
