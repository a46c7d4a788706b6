"""Identification and verification scores of a re-identification attack."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    """How well probes were matched to identities.

    `top1`/`top5`: fraction of probes whose identity ranks first / in the first five (closed-set
    identification). `tar`: true-accept rate at the false-accept rate `far` (verification: a probe claims
    an identity; the claim is accepted when its score clears a threshold that lets `far` of the impostor
    claims through).
    """

    n_probes: int
    top1: float
    top5: float
    top1_ci95: tuple[float, float]
    far: float
    tar: float


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% for the default z)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def score_matrix(similarity: np.ndarray, truth: np.ndarray, far: float = 0.01) -> Scores:
    """Scores from a (probes x identities) similarity matrix (higher = more alike) and each probe's true
    identity index. Ties are broken against the attacker (a tie with the truth counts as a miss)."""
    similarity = np.asarray(similarity, dtype=np.float64)
    n_probes, n_ids = similarity.shape
    rows = np.arange(n_probes)
    true_score = similarity[rows, truth]
    # rank of the true identity = number of identities at least as similar, other than itself
    rank = (similarity >= true_score[:, None]).sum(axis=1) - 1
    hits1 = int((rank < 1).sum())
    hits5 = int((rank < min(5, n_ids)).sum())
    impostor = np.ones_like(similarity, dtype=bool)
    impostor[rows, truth] = False
    impostor_scores = similarity[impostor]
    # the smallest threshold that lets at most `far` of the impostor claims through
    threshold = np.quantile(impostor_scores, 1.0 - far, method="higher") if impostor_scores.size else -np.inf
    tar = float((true_score > threshold).mean()) if n_probes else 0.0
    return Scores(
        n_probes=n_probes,
        top1=hits1 / n_probes if n_probes else 0.0,
        top5=hits5 / n_probes if n_probes else 0.0,
        top1_ci95=wilson_interval(hits1, n_probes),
        far=far,
        tar=tar,
    )


def nearest_gallery_similarity(
    probe_vecs: np.ndarray, gallery_vecs: np.ndarray, gallery_ids: np.ndarray, n_ids: int
) -> np.ndarray:
    """Similarity of each probe to each identity: minus the Euclidean distance to that identity's nearest
    gallery descriptor."""
    d = np.linalg.norm(probe_vecs[:, None, :] - gallery_vecs[None, :, :], axis=2)
    sim = np.full((probe_vecs.shape[0], n_ids), -np.inf)
    for j in range(n_ids):
        cols = gallery_ids == j
        if cols.any():
            sim[:, j] = -d[:, cols].min(axis=1)
    return sim
