"""
`skyblink alerts score` on every real alert in ../shared/data: the CSV, and how our score ranks
real alerts against each packet's own score.

Our classifier is trained on simulated nights only; these alerts are its test set. The levels
asserted are what it reaches (measured 2026-11-25, benchmarks/BENCHMARKS.md) minus a small margin,
never below the 0.5 floor. Short of the issue's targets (AUC >= 0.90 against ZTF's drb, >= 0.85
against Rubin's reliability) where noted.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.engines.stamps import ExternalStampRule, external_stamps
from skyblink.evaluation.survey_scores import pairwise_auc
from skyblink.storage.alerts.survey_packets import read_survey_packets

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
COLUMNS = {"alert_id", "skyblink_rb", "braai_drb", "packet_score", "packet_score_name"}
MARGIN = 0.03

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                reason=f"shared test data not found at {SHARED_DATA} (the real ZTF and Rubin alerts live there)")


def _files() -> list[Path]:
    return [*sorted(SHARED_DATA.glob("ztf-avro-alert/alerts/*.avro")), *sorted(SHARED_DATA.glob("fink-client/*.avro")),
            *sorted(SHARED_DATA.glob("braai/[0-9]*.json")),
            *sorted(SHARED_DATA.glob("lsst-alert-packet/schema/*/*/sample_data/fakeAlert.avro"))]


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("score") / "scores.csv"
    result = CliRunner().invoke(app, ["alerts", "score", *map(str, _files()), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with out.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_csv_has_one_row_per_alert_with_the_columns(rows: list[dict[str, str]]) -> None:
    assert COLUMNS <= set(rows[0])
    assert len(rows) == 68 and len({r["alert_id"] for r in rows}) == 66  # 3 synthetic Rubin samples share an id
    for row in rows:
        survey, name = row["survey"], row["packet_score_name"]
        if "fakeAlert" in row["packet"]:  # synthetic, no cutouts and no score: empty cells
            assert row["skyblink_rb"] == row["braai_drb"] == row["packet_score"] == ""
            continue
        assert 0.0 <= float(row["skyblink_rb"]) <= 1.0
        if survey == "ztf":
            assert name == ("drb" if row["drb"] else "rb") and row["braai_drb"] != ""
        else:
            assert name == "reliability" and row["braai_drb"] == ""  # braai is ZTF's model


def _column(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows])


def test_braai_port_reproduces_drb(rows: list[dict[str, str]]) -> None:
    drb_rows = [r for r in rows if r["drb"]]
    error = np.abs(_column(drb_rows, "braai_drb") - _column(drb_rows, "drb"))
    assert (error > 1e-4).sum() == 1  # ztf-avro-alert 472263571115115000, rewritten upstream in 2019


def test_ranking_against_the_packet_scores(rows: list[dict[str, str]]) -> None:
    ztf_drb = [r for r in rows if r["drb"]]
    ztf = [r for r in rows if r["survey"] == "ztf"]
    rubin = [r for r in rows if r["reliability"]]
    assert (len(ztf_drb), len(ztf), len(rubin)) == (52, 58, 7)
    drb, ours_drb = _column(ztf_drb, "drb"), _column(ztf_drb, "skyblink_rb")
    rb, ours_rb = _column(ztf, "rb"), _column(ztf, "skyblink_rb")
    rel, ours_rel = _column(rubin, "reliability"), _column(rubin, "skyblink_rb")
    measured = {
        # ROC AUC, label drb >= 0.5 (50 real, 2 bogus): 0.85, short of the 0.90 target
        "auc_drb": (pairwise_auc(drb >= 0.5, ours_drb), 0.85),
        "spearman_drb": (spearmanr(ours_drb, drb).statistic, 0.40),
        "auc_rb": (pairwise_auc(rb >= 0.5, ours_rb), 0.82),
        # ROC AUC against the continuous reliability (concordance; all 7 have reliability > 0.5): 0.857
        "auc_reliability": (pairwise_auc(rel, ours_rel), 0.857),
        "spearman_reliability": (spearmanr(ours_rel, rel).statistic, 0.78),
    }
    for name, (value, level) in measured.items():
        floor = 0.5 if name.startswith("auc") else 0.0  # AUC: better than chance; rank correlation: positive
        assert value > floor, f"{name} = {value:.3f} is not above the floor {floor}"
        assert value >= level - MARGIN, f"{name} = {value:.3f} fell below its measured level {level}"
    assert measured["auc_reliability"][0] >= 0.85  # the Rubin target is met


def test_stamp_rule() -> None:
    (rubin, *_) = read_survey_packets(SHARED_DATA / "fink-client" / "lsst-v10_0_part-2-918301.avro").alerts
    stamps = external_stamps(rubin)
    again = external_stamps(rubin)
    assert stamps.shape == (3, 63, 63) and stamps.dtype == np.float32 and np.isfinite(stamps).all()
    np.testing.assert_array_equal(stamps, again)  # the noise fill is seeded by the alert id
    # 30 px at 0.2"/px block-averaged 3x3 to the training 0.6"/px: a 10x10 island, noise around it
    outside = np.ones((63, 63), bool)
    outside[26:37, 26:37] = False
    assert 0.8 < stamps[:, outside].std() < 1.2
    zero = external_stamps(rubin, ExternalStampRule(fill="zero"))
    assert (zero[:, outside] == 0).all() and np.count_nonzero(zero[:, 27:36, 27:36]) >= 3 * 81 - 3
    # ZTF's refmsci difference is negated to science minus template
    ztf = read_survey_packets(SHARED_DATA / "ztf-avro-alert" / "alerts" / "1661382530015060001.avro").alerts[0]
    assert ztf.stamps.difference_sign == -1
    as_packet = external_stamps(ztf, ExternalStampRule(difference="as_packet", fill="zero"))
    flipped = external_stamps(ztf, ExternalStampRule(fill="zero"))
    assert as_packet[2, 31, 31] > 5 and flipped[2, 31, 31] == pytest.approx(-as_packet[2, 31, 31], rel=0.05)


def test_pairwise_auc_is_roc_auc_for_labels() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.9, 0.4, 0.5, 0.1, 0.8])
    assert pairwise_auc(labels, scores) == pytest.approx(5 / 6)
    assert np.isnan(pairwise_auc([1.0, 1.0], [0.2, 0.3]))
