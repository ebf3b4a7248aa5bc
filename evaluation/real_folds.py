"""
The real-alert protocol: every real survey alert in a data folder, grouped into cross-validation
folds by night and survey file, and ROC AUCs with bootstrap intervals.

Folds
-----
An alert's *night* is the integer part of its Julian date shifted to local noon at the
observatory (Palomar for ZTF, Cerro Pachon for Rubin), so one night's alerts share it. A *group*
is a connected set of (survey file, night) pairs: two alerts are in one group when they come from
the same file, or from the same survey night, or are the same alert in two files (Fink's files
repeat some candids). Groups never split: no night and no file is on both sides of a fold.
Groups are dealt to folds largest first, each to the fold with the fewest alerts of its survey
(ZTF into `ZTF_FOLDS` folds; Rubin's groups into as many folds as it has groups, at most that).

Labels
------
The references are other systems' scores, not human labels: ZTF's ``drb`` (braai) and ``rb``
(random forest), Rubin's ``reliability``. An alert is "real" for a reference when that score is
>= 0.5; the AUC of a score is its ROC AUC against that label.

Notes
-----
CPU only, numpy only (no torch): the driver side can run it. Deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from skyblink.storage.alerts.survey_packets import Survey, SurveyAlert, read_survey_files

__all__ = [
    "REFERENCES",
    "ZTF_FOLDS",
    "RealAlerts",
    "auc_with_interval",
    "load_real_alerts",
    "paired_auc_difference",
    "real_alert_files",
    "roc_auc",
]

#: Number of folds the ZTF groups are dealt into.
ZTF_FOLDS = 5
#: The references an alert score is measured against: (name, survey, packet score key).
REFERENCES = (("ZTF drb", Survey.ZTF, "drb"), ("ZTF rb", Survey.ZTF, "rb"), ("Rubin reliability", Survey.RUBIN, "reliability"))
#: Fraction of a day from 0h UTC to local noon at the observatory (east longitude / 360 + 0.5 ...):
#: JD - offset has its integer step at local noon. Palomar 116.9 W, Cerro Pachon 70.7 W.
_NOON_OFFSET = {Survey.ZTF: 116.9 / 360.0, Survey.RUBIN: 70.7 / 360.0}
_MJD_TO_JD = 2400000.5


def real_alert_files(root: str | Path) -> list[Path]:
    """
    Return every real alert file under a shared-data folder, in a fixed order.

    Parameters
    ----------
    root : str or Path
        The ``shared/data`` folder (ztf-avro-alert, fink-client, braai, fink-science).

    Returns
    -------
    list of Path
        Avro, JSON and Parquet packet files (Rubin's synthetic sample alerts are not real and not listed).
    """
    root = Path(root)
    return [*sorted(root.glob("ztf-avro-alert/alerts/*.avro")), *sorted(root.glob("fink-client/*.avro")),
            *sorted(root.glob("braai/[0-9]*.json")), *sorted(root.glob("fink-science/*/*.parquet"))]


def _night(alert: SurveyAlert) -> int:
    if alert.survey is Survey.ZTF:
        jd = float(alert.record["jd"])
    else:
        jd = float(alert.record["midpointMjdTai"]) + _MJD_TO_JD
    return math.floor(jd - _NOON_OFFSET[alert.survey])


@dataclass(frozen=True, slots=True)
class RealAlerts:
    """
    Distinct real alerts with cutouts, their nights, groups and folds. Stable.

    Attributes
    ----------
    alerts : tuple of SurveyAlert
        One per (survey, alert id), first file wins; only alerts with stamps.
    sources : tuple of tuple of str
        Every file each alert was read from.
    nights : (N,) ndarray of int
    groups : (N,) ndarray of int
        Connected (file, night) groups (module notes).
    folds : (N,) ndarray of int
        Fold of each alert, 0 .. n_folds - 1.
    """

    alerts: tuple[SurveyAlert, ...]
    sources: tuple[tuple[str, ...], ...]
    nights: np.ndarray
    groups: np.ndarray
    folds: np.ndarray

    @property
    def n_folds(self) -> int:
        """Number of folds."""
        return int(self.folds.max()) + 1 if len(self.folds) else 0

    def reference(self, survey: Survey, key: str) -> np.ndarray:
        """Return (N,) float: the packet score ``key`` of alerts of ``survey``, NaN elsewhere."""
        return np.array([a.scores.get(key, math.nan) if a.survey is survey else math.nan for a in self.alerts])

    def packet_target(self) -> np.ndarray:
        """Return (N,) float: each alert's own survey score (drb, else rb; reliability), NaN when none."""
        return np.array([math.nan if a.packet_score is None else a.packet_score for a in self.alerts])

    def fold_table(self) -> list[dict[str, object]]:
        """Per fold: alerts, nights, files, and the count of alerts and negatives (< 0.5) per reference."""
        rows = []
        for k in range(self.n_folds):
            inside = self.folds == k
            row: dict[str, object] = {
                "fold": k, "alerts": int(inside.sum()),
                "nights": len({(a.survey, n) for a, n, i in zip(self.alerts, self.nights, inside, strict=True) if i}),
                "files": sorted({Path(s).name for src, i in zip(self.sources, inside, strict=True) if i for s in src}),
            }
            for name, survey, key in REFERENCES:
                ref = self.reference(survey, key)[inside]
                have = np.isfinite(ref)
                row[name] = (int(have.sum()), int((ref[have] < 0.5).sum()))
            rows.append(row)
        return rows


def _find(parent: dict, x: object) -> object:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def load_real_alerts(root: str | Path, *, ztf_folds: int = ZTF_FOLDS) -> RealAlerts:
    """
    Read every real alert under ``root`` and deal them into grouped folds (module notes).

    Parameters
    ----------
    root : str or Path
        The shared-data folder.
    ztf_folds : int
        Folds for the ZTF groups.

    Returns
    -------
    RealAlerts

    Raises
    ------
    FileNotFoundError
        ``root`` holds no alert file.
    ValueError
        A file holds a packet that cannot be read (named in the message): the protocol scores every alert.
    """
    files = real_alert_files(root)
    if not files:
        msg = f"no real alert files under {root}"
        raise FileNotFoundError(msg)
    report = read_survey_files(files)
    if report.errors:
        msg = f"{len(report.errors)} unreadable packet(s), first: {report.errors[0]}"
        raise ValueError(msg)
    first: dict[tuple[str, int], SurveyAlert] = {}
    sources: dict[tuple[str, int], list[str]] = {}
    for alert in report.alerts:
        if alert.stamps is None:
            continue
        key = (alert.survey.value, alert.alert_id)
        first.setdefault(key, alert)
        source = alert.packet.split("#", 1)[0]
        if source not in sources.setdefault(key, []):
            sources[key].append(source)
    keys = list(first)
    alerts = tuple(first[k] for k in keys)
    nights = np.array([_night(a) for a in alerts], dtype=np.int64)
    # union-find over files and survey nights
    parent: dict[object, object] = {}
    for key, alert, night in zip(keys, alerts, nights, strict=True):
        nodes = [("night", alert.survey.value, int(night)), *(("file", s) for s in sources[key])]
        for node in nodes:
            parent.setdefault(node, node)
        for node in nodes[1:]:
            parent[_find(parent, node)] = _find(parent, nodes[0])
    roots = [_find(parent, ("night", a.survey.value, int(n))) for a, n in zip(alerts, nights, strict=True)]
    order = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    groups = np.array([order[r] for r in roots], dtype=np.int64)
    folds = np.full(len(alerts), -1, dtype=np.int64)
    for survey in (Survey.ZTF, Survey.RUBIN):
        mine = np.array([a.survey is survey for a in alerts])
        ids, sizes = np.unique(groups[mine], return_counts=True)
        n = min(ztf_folds, len(ids))
        load = np.zeros(n, dtype=np.int64)
        for g, size in sorted(zip(ids, sizes, strict=True), key=lambda t: (-t[1], t[0])):
            k = int(np.argmin(load))
            folds[groups == g] = k
            load[k] += size
    return RealAlerts(alerts, tuple(tuple(sources[k]) for k in keys), nights, groups, folds)


def roc_auc(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """
    ROC AUC (Mann-Whitney, ties count one half) of ``scores`` for 0/1 ``labels``. Stable.

    Returns
    -------
    float
        NaN when one class is absent.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auc_with_interval(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                      resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """
    ROC AUC with a percentile bootstrap interval (alerts resampled with replacement). Stable.

    Parameters
    ----------
    labels, scores : array_like, same length
    resamples : int
        Bootstrap resamples; those that draw one class only are skipped.
    seed : int
    level : float
        Interval coverage.

    Returns
    -------
    (auc, low, high)
        NaN where one class is absent.
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    return _bootstrapped(len(y), lambda idx: roc_auc(y[idx], s[idx]), resamples=resamples, seed=seed, level=level)


def _bootstrapped(n: int, statistic: Callable[[np.ndarray], float], *, resamples: int, seed: int,
                  level: float) -> tuple[float, float, float]:
    """
    ``statistic`` of all ``n`` alerts and its percentile bootstrap interval: alerts drawn with
    replacement, draws where the statistic is NaN (one class only) skipped; NaN throughout when the
    statistic of all alerts is NaN.
    """
    value = statistic(np.arange(n))
    if math.isnan(value):
        return value, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        drawn = statistic(rng.integers(0, n, n))
        if not math.isnan(drawn):
            draws.append(drawn)
    low, high = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return value, float(low), float(high)


def paired_auc_difference(labels: Sequence[bool] | np.ndarray, scores: Sequence[float] | np.ndarray,
                          baseline: Sequence[float] | np.ndarray, *, resamples: int = 2000, seed: int = 0,
                          level: float = 0.95) -> tuple[float, float, float]:
    """
    AUC of ``scores`` minus AUC of ``baseline`` on the same alerts, with a paired percentile bootstrap interval.

    Each resample draws alerts with replacement and scores both on the same draw, so the interval
    is that of the *difference* (narrower than comparing two separate intervals). Experimental.

    Parameters
    ----------
    labels, scores, baseline : array_like, same length
    resamples, seed, level : as `auc_with_interval`

    Returns
    -------
    (difference, low, high)
        NaN where one class is absent.
    """
    y = np.asarray(labels, dtype=bool)
    a = np.asarray(scores, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    return _bootstrapped(len(y), lambda idx: roc_auc(y[idx], a[idx]) - roc_auc(y[idx], b[idx]), resamples=resamples,
                         seed=seed, level=level)
