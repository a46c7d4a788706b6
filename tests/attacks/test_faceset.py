"""Face data: the packaged photos become a face set with several identities, some with several photos,
and an operator's own folder of photos loads the same way."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attacks.errors import AuditError
from attacks.faceset import load_faceset
from attacks.render import NONE, render, rendering_size

from .conftest import needs_audit_extra


def test_packaged_faces_give_many_identities_and_group_the_same_person(faceset):
    by_id = faceset.by_identity()
    assert len(by_id) >= 20
    # Obama's four photos in the face_recognition sdist are recognised as one person
    obama = [ident for ident, photos in by_id.items() if any("obama" in p.name for p in photos)]
    assert len(obama) == 1
    assert len(by_id[obama[0]]) >= 3
    for p in faceset.photos:
        assert p.pixels.dtype == np.uint8 and p.pixels.shape[2] == 3


def test_rendering_puts_the_face_box_in_the_middle_at_face_px(faceset):
    r = render(faceset.photos[0], 64, np.random.default_rng(0), NONE)
    assert r.pixels.shape == (rendering_size(64), rendering_size(64), 3)
    left, top, right, bottom = r.box
    assert right - left == 64 and bottom - top == 64


def _operator_dir(tmp_path, faceset, n_identities, photos_per_identity, *, tight=True):
    """Tight crops saved as JPEG, as an operator might hand them over."""
    rng = np.random.default_rng(3)
    root = tmp_path / "faces"
    for ident, photos in list(faceset.by_identity().items())[:n_identities]:
        (root / ident).mkdir(parents=True)
        for n in range(photos_per_identity):
            r = render(photos[n % len(photos)], 96, rng)
            img = Image.fromarray(r.pixels)
            if tight:
                img = img.crop(tuple(round(v) for v in r.box))
            img.save(root / ident / f"{n}.jpg", quality=90)
    return root


def test_operator_folder_loads_with_whole_image_as_box_when_no_face_is_found(tmp_path, faceset):
    needs_audit_extra()
    root = _operator_dir(tmp_path, faceset, 3, 2)
    # a photo with no face at all: the whole image is the face box
    Image.fromarray(np.full((50, 40, 3), 90, np.uint8)).save(root / sorted(p.name for p in root.iterdir())[0] / "blank.png")
    loaded = load_faceset(root, min_photos=2)
    assert len(loaded.identities) == 3
    blank = next(p for p in loaded.photos if p.name == "blank.png")
    assert blank.box == (0.0, 0.0, 40.0, 50.0)


def test_operator_folder_skips_identities_with_one_photo_and_needs_two_identities(tmp_path, faceset):
    needs_audit_extra()
    root = _operator_dir(tmp_path, faceset, 2, 1)
    with pytest.raises(AuditError, match="at least two identity folders"):
        load_faceset(root, min_photos=2)


def test_missing_face_directory_is_an_audit_error(tmp_path):
    with pytest.raises(AuditError, match="does not exist"):
        load_faceset(tmp_path / "nope")


def test_grey_surround_keeps_only_the_face_box(faceset):
    r = render(faceset.photos[0], 64, np.random.default_rng(0), NONE, surround="grey")
    left, top, right, bottom = (round(v) for v in r.box)
    grow = round(0.15 * 64)
    assert np.all(r.pixels[: top - grow] == 128) and np.all(r.pixels[bottom + grow :] == 128)
    assert np.all(r.pixels[:, : left - grow] == 128) and np.all(r.pixels[:, right + grow :] == 128)
    assert r.pixels[top:bottom, left:right].std() > 10
