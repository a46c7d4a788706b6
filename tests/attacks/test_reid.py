"""The re-identification audit end to end, through `python -m attacks reid` in its own process (as
`dpstream audit reid` runs it), on a few identities so it stays fast. The full sweep is in
docs/privacy-audit.md."""

from __future__ import annotations

import json

import pytest

from .conftest import needs_audit_extra, read_json, run_attacks
from .test_faceset import _operator_dir

RESULT_KEYS = {"attacker", "setting", "eps_pix", "m_pixels", "cell_size", "top1", "top5"}


@pytest.fixture(scope="module")
def small_report(tmp_path_factory, faceset_dir):
    out = tmp_path_factory.mktemp("reid")
    rc, _, err = run_attacks(
        "reid", "--max-identities", "6", "--probes-per-identity", "3", "--train-per-identity", "4",
        "--attackers", "dlib,trained-head", "--frames", "5", "--eps-pix", "1", "--m-pixels", "16",
        "--cell-size", "8", "--layouts", "fixed", "--seed", "7",
        "--json", str(out / "reid.json"), "--plot", str(out / "reid.png"),
    )
    assert rc == 0, err
    return read_json(out / "reid.json"), out / "reid.png"


def test_report_has_identities_probes_chance_and_one_result_per_attacker_and_setting(small_report):
    report, _ = small_report
    assert report["n_identities"] == 6
    assert report["n_probes"] == 18
    assert report["chance"] == pytest.approx(1 / 6)
    for r in report["results"]:
        assert set(r) >= RESULT_KEYS
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
    seen = {(r["attacker"], r["setting"]) for r in report["results"]}
    for attacker in ("dlib", "trained-head"):
        for setting in ("clean", "pixelize", "blur", "dp"):
            assert (attacker, setting) in seen
    # the multi-frame attacker only runs on randomized (dp) releases
    assert {r["setting"] for r in report["results"] if r["attacker"] == "multiframe-dlib"} == {"dp"}
    assert {r["frames"] for r in report["results"] if r["attacker"] == "multiframe-dlib"} == {5}


def test_attack_identifies_clean_and_plainly_pixelized_faces(small_report):
    # probes are rendered from a fixed seed and dlib is deterministic, so these are fixed numbers
    report, _ = small_report
    by = {(r["attacker"], r["setting"]): r for r in report["results"]}
    assert by[("dlib", "clean")]["top1"] >= 0.9
    assert by[("dlib", "pixelize")]["top1"] >= 2 * report["chance"]


def test_plot_is_a_png(small_report):
    _, png = small_report
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_operator_photo_folders_run_the_same_protocol(tmp_path, faceset):
    needs_audit_extra()
    root = _operator_dir(tmp_path, faceset, 4, 2)
    rc, _, err = run_attacks(
        "reid", "--faces", str(root), "--probes-per-identity", "2", "--attackers", "dlib", "--frames", "",
        "--eps-pix", "1", "--m-pixels", "16", "--cell-size", "16", "--layouts", "fixed", "--seed", "3",
        "--json", str(tmp_path / "r.json"),
    )
    assert rc == 0, err
    report = read_json(tmp_path / "r.json")
    assert report["n_identities"] == 4
    assert report["n_probes"] == 8
    clean = next(r for r in report["results"] if r["setting"] == "clean")
    assert clean["top1"] > report["chance"]


def test_missing_face_folder_exits_with_usage_error(tmp_path):
    rc, _, err = run_attacks("reid", "--faces", str(tmp_path / "none"), "--json", str(tmp_path / "r.json"))
    assert rc == 2
    assert "does not exist" in err


def test_summarize_prints_a_markdown_row_per_setting(small_report, tmp_path):
    report, _ = small_report
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    rc, out, err = run_attacks("summarize", str(path))
    assert rc == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| setting | dlib")
    assert any(line.startswith("| clean |") for line in rows)
    assert any(line.startswith("| dp eps_pix=1 m=16 8 px |") for line in rows)


def test_summarize_of_a_partial_report_says_so_on_its_first_line(small_report, tmp_path):
    report, _ = small_report
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({**report, "complete": False}))
    rc, out, err = run_attacks("summarize", str(path))
    assert rc == 0, err
    assert out.splitlines()[0].startswith("> PARTIAL")
    assert str(path) in out.splitlines()[0]
    # a finished report has no such note
    done = tmp_path / "done.json"
    done.write_text(json.dumps(report))
    rc, out, err = run_attacks("summarize", str(done))
    assert rc == 0, err
    assert "PARTIAL" not in out
