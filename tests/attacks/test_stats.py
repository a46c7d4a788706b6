import math

import pytest

from attacks.metrics import score_matrix, wilson_interval
from attacks.stats import betainc, clopper_pearson

scipy_stats = pytest.importorskip("scipy.stats")
scipy_special = pytest.importorskip("scipy.special")


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.2), (2.5, 3.5, 0.3), (1000, 99001, 0.011), (5, 1, 0.999)])
def test_incomplete_beta_matches_scipy(a, b, x):
    assert betainc(a, b, x) == pytest.approx(float(scipy_special.betainc(a, b, x)), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k,n,alpha", [(0, 50, 0.01), (1, 50, 0.01), (4600, 100000, 0.005), (7, 7, 0.05),
                                       (12500, 100000, 5e-5)])
def test_clopper_pearson_matches_scipy_beta_quantiles(k, n, alpha):
    lo, hi = clopper_pearson(k, n, alpha)
    ref_lo = 0.0 if k == 0 else float(scipy_stats.beta.ppf(alpha, k, n - k + 1))
    ref_hi = 1.0 if k == n else float(scipy_stats.beta.ppf(1 - alpha, k + 1, n - k))
    assert lo == pytest.approx(ref_lo, rel=1e-8, abs=1e-12)
    assert hi == pytest.approx(ref_hi, rel=1e-8, abs=1e-12)


def test_clopper_pearson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        clopper_pearson(5, 4, 0.05)


def test_top1_top5_and_ties_count_against_the_attacker():
    # 3 probes, 6 identities; probe 0 right, probe 1 tied with another identity, probe 2 ranked 6th
    sim = [
        [9, 1, 1, 1, 1, 1],
        [5, 5, 0, 0, 0, 0],
        [0, 1, 2, 3, 4, 5],
    ]
    s = score_matrix(sim, [0, 1, 0])
    assert s.top1 == pytest.approx(1 / 3)
    assert s.top5 == pytest.approx(2 / 3)
    assert s.n_probes == 3


def test_true_accept_rate_at_fixed_false_accept_rate():
    # genuine scores 10, 10, 0; impostor scores all below 5 -> 2 of 3 accepted at any FAR
    sim = [[10, 1, 2], [3, 10, 4], [0, 2, 1]]
    s = score_matrix(sim, [0, 1, 0], far=0.1)
    assert s.tar == pytest.approx(2 / 3)


def test_wilson_interval_covers_the_estimate():
    lo, hi = wilson_interval(3, 100)
    assert lo < 0.03 < hi
    assert math.isclose(sum(wilson_interval(50, 100)), 1.0)
