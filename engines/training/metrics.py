"""
Validation metrics of the model cards: ROC AUC, false-positive rate at 1 % false negatives,
completeness and purity per magnitude bin.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["completeness_by_magnitude", "fpr_at_fnr", "roc_auc"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """
    Area under the ROC curve (Mann-Whitney U), ties counted half.

    Raises
    ------
    ValueError
        Only one class is present.
    """
    labels = np.asarray(labels, bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        msg = f"ROC AUC needs both classes, got {n_pos} positives and {n_neg} negatives"
        raise ValueError(msg)
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fpr_at_fnr(labels: np.ndarray, scores: np.ndarray, fnr: float = 0.01) -> tuple[float, float]:
    """
    Return (false-positive rate, threshold) at the highest threshold that keeps the false-negative
    rate at or below ``fnr``.
    """
    labels = np.asarray(labels, bool)
    positives = np.sort(np.asarray(scores)[labels])
    k = int(np.floor(fnr * len(positives)))  # at most k positives may fall below the threshold
    threshold = float(positives[k]) if len(positives) else 1.0
    negatives = np.asarray(scores)[~labels]
    return float(np.mean(negatives >= threshold)) if len(negatives) else 0.0, threshold


def completeness_by_magnitude(mags: np.ndarray, found: np.ndarray, bins: np.ndarray) -> list[dict[str, float]]:
    """Return, per magnitude bin, the number of true sources, how many were found and the fraction."""
    out = []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        inside = (mags >= lo) & (mags < hi)
        n = int(inside.sum())
        k = int(np.asarray(found)[inside].sum())
        out.append({"mag_lo": float(lo), "mag_hi": float(hi), "n": n, "found": k, "completeness": k / n if n else float("nan")})
    return out
