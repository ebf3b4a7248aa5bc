"""
The real-alert protocol: every real alert in ../shared/data is read (Fink's Parquet files too),
each distinct alert once, and the folds never put one night or one file on both sides.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from skyblink.evaluation.real_folds import (
    auc_with_interval,
    load_real_alerts,
    paired_auc_difference,
    roc_auc,
)
from skyblink.storage.alerts.survey_packets import Survey, read_survey_packets

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared real alerts not found at {SHARED_DATA}")


@pytest.fixture(scope="module")
def real():
    return load_real_alerts(SHARED_DATA)


@needs_data
def test_fink_parquet_files_are_read() -> None:
    ztf = read_survey_packets(SHARED_DATA / "fink-science" / "ztf" / "alerts-20190908.parquet")
    rubin = read_survey_packets(SHARED_DATA / "fink-science" / "rubin" / "rubin-v10_0-sample.parquet")
    assert (len(ztf.alerts), len(ztf.errors), len(rubin.alerts), len(rubin.errors)) == (51, 0, 25, 0)
    assert sum(a.scores["drb"] < 0.5 for a in ztf.alerts) == 20  # as the data's PROVENANCE says
    assert sum(a.scores["reliability"] < 0.5 for a in rubin.alerts) == 14
    assert all(a.stamps is not None and a.stamps.science.shape == (63, 63) for a in ztf.alerts + rubin.alerts)
    assert rubin.alerts[0].schema_version == "lsst.v10_0" and rubin.alerts[0].stamps.raw_shape == (30, 30)


def test_a_file_that_is_not_parquet_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    report = read_survey_packets(bad)
    assert not report.alerts and len(report.errors) == 1
    assert "broken.parquet" in str(report.errors[0]) and "Parquet" in str(report.errors[0])


@needs_data
def test_every_real_alert_once_in_folds_grouped_by_night_and_file(real) -> None:
    ztf = [a for a in real.alerts if a.survey is Survey.ZTF]
    rubin = [a for a in real.alerts if a.survey is Survey.RUBIN]
    # 264 fink-science + 49 fink-client + 7 ztf-avro-alert + 2 braai ZTF; 25 + 7 Rubin
    assert (len(ztf), len(rubin)) == (322, 32)
    assert len({(a.survey, a.alert_id) for a in real.alerts}) == len(real.alerts)
    nights: dict[tuple[str, int], set[int]] = {}
    files: dict[str, set[int]] = {}
    for alert, night, fold, sources in zip(real.alerts, real.nights, real.folds, real.sources, strict=True):
        nights.setdefault((alert.survey.value, int(night)), set()).add(int(fold))
        for source in sources:
            files.setdefault(source, set()).add(int(fold))
    assert all(len(f) == 1 for f in nights.values())  # no night on both sides
    assert all(len(f) == 1 for f in files.values())  # no file on both sides
    assert real.n_folds == 5
    negatives = {row["fold"]: row["ZTF drb"][1] for row in real.fold_table()}
    assert sum(negatives.values()) == 25  # 23 fink-science + 2 fink-client


def test_auc_and_its_interval() -> None:
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 0] * 5, bool)
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2, 0.7, 0.3] * 5)
    auc, low, high = auc_with_interval(labels, scores, resamples=300)
    assert auc == pytest.approx(roc_auc(labels, scores)) and auc == pytest.approx(15 / 16)
    assert low < auc <= high <= 1.0 and low > 0.7
    assert all(math.isnan(v) for v in auc_with_interval(np.ones(4, bool), np.arange(4.0)))


def test_paired_auc_difference() -> None:
    rng = np.random.default_rng(5)
    labels = rng.random(200) < 0.3
    good = labels + rng.normal(0, 0.5, 200)
    noise = rng.normal(0, 1, 200)
    diff, low, high = paired_auc_difference(labels, good, noise, resamples=300)
    assert diff == pytest.approx(roc_auc(labels, good) - roc_auc(labels, noise))
    assert 0 < low < diff < high  # a clearly better score: the interval excludes 0
    same = paired_auc_difference(labels, good, good, resamples=50)
    assert same == (0.0, 0.0, 0.0)  # the same score on every draw
    assert all(math.isnan(v) for v in paired_auc_difference(np.ones(4, bool), np.arange(4.0), np.arange(4.0)))
