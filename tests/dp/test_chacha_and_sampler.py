"""ChaCha20 against RFC 8439, and the discrete Laplace sampler against its exact law and OpenDP."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from scipy import stats

from dp import kernels_cpu
from dp.noise import discrete_laplace_pmf, key_words, laplace_tables, sample

Z_1E4 = 3.891  # two-sided normal quantile: a correct sampler fails with p < 1e-4


def _block_hex(key: bytes, counter: int, nonce: bytes) -> str:
    n = np.frombuffer(nonce, dtype="<u4")
    words = kernels_cpu.chacha20_block(key_words(key), counter, int(n[0]), int(n[1]), int(n[2]))
    return np.asarray(words, dtype="<u4").tobytes().hex()


def test_chacha20_block_matches_rfc8439_section_2_3_2():
    got = _block_hex(bytes(range(32)), 1, bytes.fromhex("000000090000004a00000000"))
    assert got == (
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    )


def test_chacha20_block_matches_rfc8439_appendix_a1_vectors():
    zero = bytes(32)
    assert _block_hex(zero, 0, bytes(12)) == (
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    assert _block_hex(zero, 1, bytes(12)) == (
        "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
        "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"
    )


def _chi_square_pvalue(z: np.ndarray, scale: float) -> float:
    """Goodness of fit to DiscreteLaplace(scale): every integer with expected count >= 20, tails pooled."""
    n = z.size
    k = 0
    while n * discrete_laplace_pmf(np.array([k + 1]), scale)[0] >= 20:
        k += 1
    support = np.arange(-k, k + 1)
    p = discrete_laplace_pmf(support, scale)
    tail = (1 - p.sum()) / 2
    counts = np.bincount(np.clip(z, -k - 1, k + 1) + k + 1, minlength=2 * k + 3)
    _, pvalue = stats.chisquare(counts, n * np.concatenate([[tail], p, [tail]]))
    return float(pvalue)


@pytest.mark.parametrize("scale", [0.7, 3.0, 40.0])
def test_sampler_fits_exact_pmf_chi_square(scale, key):
    pvalue = _chi_square_pvalue(sample(scale, 400_000, key=key), scale)
    assert pvalue > 1e-4, f"sampler deviates from DiscreteLaplace({scale}): p={pvalue:.2e}"


@pytest.mark.parametrize("scale", [3.0, 40.0])
def test_chi_square_detects_a_ten_percent_scale_error(scale, key):
    """The goodness-of-fit test above has the power the contract asks for: it rejects a 10% error."""
    assert _chi_square_pvalue(sample(scale * 1.1, 400_000, key=key), scale) < 1e-4


@pytest.mark.parametrize("scale", [12240.0, 489600.0])
def test_large_scales_have_the_exact_mean_absolute_value(scale, key):
    """Scales of real cameras use several base-256 digits; E|Z| = 2q / (1 - q^2)."""
    n = 400_000
    z = sample(scale, n, key=key).astype(np.float64)
    q = np.exp(-1.0 / scale)
    one_minus_q = -np.expm1(-1.0 / scale)
    mean_abs = 2 * q / (one_minus_q * (1 + q))
    second_moment = 2 * q / one_minus_q**2  # E[Z^2]
    sd = np.sqrt(second_moment - mean_abs**2)
    assert abs(np.abs(z).mean() - mean_abs) < Z_1E4 * sd / np.sqrt(n)
    # symmetric: the mean is zero
    assert abs(z.mean()) < Z_1E4 * np.sqrt(second_moment) / np.sqrt(n)


def test_sampler_matches_opendp_two_sample(key):
    opendp = pytest.importorskip("opendp.prelude")
    opendp.enable_features("contrib")
    scale = 5.0
    n = 60_000
    meas = opendp.m.make_laplace(
        opendp.vector_domain(opendp.atom_domain(T=int)), opendp.l1_distance(T=int), scale=scale
    )
    theirs = np.asarray(meas([0] * n))
    ours = sample(scale, n, key=key)
    edges = np.concatenate([[-np.inf], np.arange(-25, 26) + 0.5 - 1, [np.inf]])
    table = np.vstack([np.histogram(ours, edges)[0], np.histogram(theirs, edges)[0]])
    table = table[:, table.sum(axis=0) > 0]
    _, pvalue, _, _ = stats.chi2_contingency(table)
    assert pvalue > 1e-4


def test_tables_state_a_deviation_bound_below_2_to_minus_56():
    for scale in ("0.5", "3", "255", "12240", "489600", "1e9"):
        assert laplace_tables(Decimal(scale)).tv_bound < 2.0**-56


def test_different_keys_give_independent_noise(key):
    a = sample(50.0, 10_000, key=key)
    b = sample(50.0, 10_000)
    assert not np.array_equal(a, b)
    assert abs(stats.pearsonr(a, b)[0]) < Z_1E4 / np.sqrt(10_000)


# --- the CPU's vectorized generator and guide-table sampler equal the shared scalar reference ---------
def test_simd_chacha_blocks_equal_the_scalar_block_function(key):
    """kernels_cpu.chacha20_blocks (many blocks per SIMD pass) against cell_math's block function,
    including a count that is not a multiple of the vector width and the 32-bit counter's wraparound."""
    words = key_words(key)
    for first, count, domain in ((0, 37, 1), (2**32 - 5, 11, 2), (123_456, 16, 7)):
        out = np.empty((16, count), dtype=np.uint32)
        kernels_cpu.chacha20_blocks(words, first, count, domain, out)
        want = np.array([kernels_cpu.chacha20_block(words, first + i, domain, 0, 0) for i in range(count)],
                        dtype=np.uint64).T.astype(np.uint32)
        assert np.array_equal(out, want), (first, count, domain)


@pytest.mark.parametrize("scale", ["0.5", "3", "765", "12240", "1e7", "4e12"])
def test_fill_noise_equals_the_reference_sampler(scale, key):
    """Every sample of fill_noise (SIMD ChaCha, guide tables, parallel chunks) is the shared scalar
    sampler's sample at the same index: one or two samples per block, one to six digits."""
    from dp.cell_math import DOMAIN_LAYOUT

    tables = laplace_tables(Decimal(scale))
    words = key_words(key)
    n = 3 * 256 + 77  # several parallel chunks, the last one partial, an odd count
    out = np.empty(n, dtype=np.int64)
    kernels_cpu.fill_noise(words, DOMAIN_LAYOUT, tables.zero_threshold, tables.digits, tables.guide,
                           tables.n_digits, out)
    want = [kernels_cpu.discrete_laplace(words, i, DOMAIN_LAYOUT, tables.zero_threshold, tables.digits,
                                         tables.n_digits) for i in range(n)]
    assert out.tolist() == want

