"""``diverse-entropy``: uncertain scans that are not near-duplicates of each other.

The ``CANDIDATES_PER_PICK * k`` most uncertain scans (entropy, as ``entropy``) are clustered into ``k``
groups by their encoder features (the network's deepest encoder output averaged over space, L2-normed;
k-means started farthest-first from the most uncertain scan, so no seed is needed); the most uncertain
scan of each group is chosen, the chosen ranked by uncertainty (a group left empty: the next most
uncertain candidates fill in)."""
from __future__ import annotations

from typing import List

import numpy as np

from nnunetv2_sss.active.strategies.base import Strategy, by_uncertainty

CANDIDATES_PER_PICK = 3
MAX_ITERATIONS = 100


def kmeans(points: np.ndarray, k: int) -> np.ndarray:
    """Cluster of each row of ``points`` ``(N, F)``: k-means with farthest-first centres, the first the
    first row; Lloyd's steps until the assignment stops changing. Returns ``(N,)`` int."""
    centres = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    while len(centres) < min(k, len(points)):
        centres.append(int(np.argmax(distance)))
        distance = np.minimum(distance, np.linalg.norm(points - points[centres[-1]], axis=1))
    means = points[centres]
    assignment = np.full(len(points), -1)
    for _ in range(MAX_ITERATIONS):
        new = np.linalg.norm(points[:, None] - means[None], axis=2).argmin(1)
        if np.array_equal(new, assignment):
            break
        assignment = new
        means = np.stack([points[assignment == c].mean(0) if (assignment == c).any() else means[c]
                          for c in range(len(means))])
    return assignment


class DiverseEntropy(Strategy):
    name = "diverse-entropy"
    summary = (f"the most uncertain scan of each of k encoder-feature clusters of the {CANDIDATES_PER_PICK}k most "
               f"uncertain (entropy)")
    needs_features = True

    def rank(self, cases, records, k, rng):
        candidates = by_uncertainty(cases, records)[:CANDIDATES_PER_PICK * k]
        features = np.stack([records[case].features for case in candidates]).astype(np.float64)
        features /= np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        clusters = kmeans(features, k)
        chosen: List[str] = []
        for cluster in dict.fromkeys(clusters):  # candidates are in uncertainty order: the first of each cluster
            chosen.append(candidates[list(clusters).index(cluster)])
        chosen += [case for case in candidates if case not in chosen][:k - len(chosen)]
        return [(case, records[case].uncertainty) for case in by_uncertainty(chosen, records)]
