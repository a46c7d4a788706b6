"""The empirical DP audit: it must pass the real Pixelizer and flag a mechanism with half the noise.

Both statistical tests run at confidence 1 - 1e-4: the Clopper-Pearson bound is below the true epsilon with
at least that probability, so the real mechanism fails by chance at most 1e-4 of the time. The broken
mechanism's true epsilon is twice the claim, far above the bound's sampling error at these sample sizes.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from attacks.errors import AuditError
from attacks.mechanism import (
    MechanismAuditConfig,
    _lower_bound,
    audit_mechanism,
    max_detectable_eps,
    neighbouring_cells,
)
from dp import Pixelizer, PixelizeSpec

from .conftest import read_json, run_attacks

CONFIDENCE = 1 - 1e-4


def test_fixed_layout_means_are_cells_in_raster_order():
    # the audit reads a cell's means straight from Release.means; check that against the reconstruction
    px = Pixelizer(PixelizeSpec(eps_pix=1.0, m_pixels=4, channels=3, layout="fixed", cell_size=8), backend="cpu")
    rel = px.release(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    means = np.asarray(rel.means).reshape(-1, 3)
    assert np.array_equal(rel.reconstruct()[::8, ::8].reshape(-1, 3), means)


def test_neighbouring_cells_differ_in_exactly_m_positions_by_255():
    x, x_prime = neighbouring_cells(16, 16, 3)
    changed = np.any(x != x_prime, axis=2)
    assert changed.sum() == 16
    assert np.all(x_prime[changed].astype(int) - x[changed].astype(int) == 255)
    assert np.all(x[~changed] == 128)


@pytest.mark.parametrize("eps_pix,m_pixels,cell_size", [(1.0, 16, 16), (0.5, 1, 8)])
def test_real_pixelizer_lower_bound_stays_at_or_under_claimed_eps(eps_pix, m_pixels, cell_size):
    cfg = MechanismAuditConfig(eps_pix=eps_pix, m_pixels=m_pixels, cell_size=cell_size, n_select=20_000,
                               n_eval=100_000, confidence=CONFIDENCE)
    audit = audit_mechanism(cfg)
    assert audit.passed
    assert audit.eps_lower_bound <= eps_pix
    # and the audit is not vacuous: the best event gets close to the claim
    assert audit.eps_lower_bound > 0.5 * eps_pix


def test_half_noise_mechanism_is_flagged():
    cfg = MechanismAuditConfig(eps_pix=1.0, m_pixels=16, cell_size=16, n_select=20_000, n_eval=100_000,
                               confidence=CONFIDENCE)
    audit = audit_mechanism(cfg, noise_eps_pix=2.0)
    assert not audit.passed
    assert audit.eps_lower_bound > 1.0
    assert audit.eps_claimed == 1.0 and audit.eps_true_noise == 2.0


def test_audit_refuses_m_pixels_that_do_not_fit_in_a_cell():
    with pytest.raises(AuditError, match="does not fit"):
        MechanismAuditConfig(eps_pix=1.0, m_pixels=100, cell_size=8)


@pytest.mark.parametrize("counts", [{"n_eval": 0}, {"n_select": -5}, {"n_eval": 99}])
def test_audit_refuses_too_few_releases_to_bound_anything(counts):
    with pytest.raises(AuditError, match="at least 100 releases"):
        MechanismAuditConfig(eps_pix=1.0, m_pixels=16, **counts)


def test_max_detectable_eps_is_the_largest_bound_any_outcome_gives():
    n, alpha = 300, 0.01
    # Clopper-Pearson at alpha/2 each side: n/n has lower bound q = (alpha/2)^(1/n), 0/n has upper bound 1 - q
    q = (alpha / 2) ** (1 / n)
    assert max_detectable_eps(n, alpha) == pytest.approx(np.log(q / (1 - q)), rel=1e-9)
    best = max(_lower_bound(a, b, n, alpha) for a in range(0, n + 1, 7) for b in range(0, n + 1, 7))
    assert best <= max_detectable_eps(n, alpha) + 1e-12


def test_audit_refuses_a_claim_no_outcome_could_disprove():
    # at n_eval=1000, confidence 0.99 no outcome shows a bound above ln(q / (1 - q)) ~ 5.2: a claim of 6 would
    # pass even a mechanism with no noise at all
    top = max_detectable_eps(1000, 0.01)
    assert 5 < top < 6
    with pytest.raises(AuditError, match="could not fail.*raise --n-eval"):
        MechanismAuditConfig(eps_pix=6.0, m_pixels=16, n_eval=1000, confidence=0.99)
    MechanismAuditConfig(eps_pix=5.0, m_pixels=16, n_eval=1000, confidence=0.99)  # below it: auditable
    MechanismAuditConfig(eps_pix=6.0, m_pixels=16, confidence=0.99)  # the default n_eval reaches ~10


def test_mechanism_command_refuses_an_unauditable_claim(tmp_path):
    out = tmp_path / "mechanism.json"
    rc, _, err = run_attacks("mechanism", "--eps-pix", "6", "--m-pixels", "16", "--n-eval", "1000",
                             "--json", str(out))
    assert rc == 2 and "could not fail" in err and not out.exists()


def test_mechanism_command_writes_report_and_exits_zero(tmp_path):
    out = tmp_path / "mechanism.json"
    rc, _, err = run_attacks("mechanism", "--eps-pix", "1", "--m-pixels", "16", "--n-select", "10000",
                             "--n-eval", "60000", "--confidence", str(CONFIDENCE), "--json", str(out))
    assert rc == 0, err
    report = read_json(out)
    assert report["eps_claimed"] == 1.0
    assert report["eps_lower_bound"] <= 1.0
    assert report["confidence"] == CONFIDENCE
    assert report["passed"] is True
    assert report["control_flagged"] is True
    assert report["controls"][0]["eps_lower_bound"] > 1.0


def test_mechanism_command_rejects_bad_epsilon(tmp_path):
    rc, _, err = run_attacks("mechanism", "--eps-pix", "-1", "--json", str(tmp_path / "x.json"))
    assert rc == 2


def test_mechanism_progress_counts_each_sample_once(tmp_path):
    # 100 and 300 are not multiples of the 256 cells one release gives
    rc, _, err = run_attacks("mechanism", "--n-select", "100", "--n-eval", "300", "--no-control",
                             "--json", str(tmp_path / "m.json"))
    assert rc in (0, 1), err
    counts = re.findall(r"\b(\d+)/(\d+)\b", err)
    assert counts, err
    assert counts[-1] == ("800", "800"), err  # 2 frames x (100 + 300) samples
    assert all(int(done) <= int(total) for done, total in counts), err
