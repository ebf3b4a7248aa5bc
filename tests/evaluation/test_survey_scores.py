"""
`skyblink alerts score` on every real alert in ../shared/data: the CSV, and how our scores rank
real alerts against each packet's own score.

The pipeline's classifier (``--model classifier``) is trained on simulated nights only; these
alerts are its test set. The levels asserted are what it reaches (measured 2026-11-25,
benchmarks/BENCHMARKS.md) minus a small margin, never below the 0.5 floor. Short of the issue's
targets (AUC >= 0.90 against ZTF's drb, >= 0.85 against Rubin's reliability) where noted.

The survey classifier (the default) was trained on these alerts, in grouped folds whose held-out
figures its card records; here it is checked as shipped: the same network in torch and ONNX, the
class head of the pipeline's classifier, and (in-sample, so only as a sanity floor) a ranking
far from chance.
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


def _score(tmp_path_factory: pytest.TempPathFactory, *options: str) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("score") / "scores.csv"
    result = CliRunner().invoke(app, ["alerts", "score", *map(str, _files()), "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    with out.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """The pipeline's classifier's scores (v1.0, trained on the simulator only)."""
    return _score(tmp_path_factory, "--model", "classifier")


@pytest.fixture(scope="module")
def survey_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """`skyblink alerts score` as a user runs it: the survey classifier."""
    return _score(tmp_path_factory)


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


def test_the_default_score_is_the_survey_classifier_as_shipped(survey_rows: list[dict[str, str]],
                                                              rows: list[dict[str, str]]) -> None:
    import torch

    from skyblink.engines.backends import OnnxRuntimeRunner
    from skyblink.engines.catalog import load_card, load_network, onnx_path

    alerts = [a for f in _files() for a in read_survey_packets(f).alerts if a.stamps is not None]
    stamps = np.stack([external_stamps(a) for a in alerts]).astype(np.float32)
    with torch.no_grad():
        rb, classes = load_network("survey_classifier")(torch.from_numpy(stamps))
        _, v1_classes = load_network("classifier")(torch.from_numpy(stamps))
    with OnnxRuntimeRunner(onnx_path("survey_classifier")) as runner:
        graph = runner.infer({"stamps": stamps})
    np.testing.assert_allclose(graph["real_bogus"], rb.numpy(), atol=1e-4)
    np.testing.assert_allclose(classes.numpy(), v1_classes.numpy(), atol=1e-6)  # the class head is the classifier's
    by_id = {r["alert_id"]: float(r["skyblink_rb"]) for r in survey_rows if r["skyblink_rb"]}
    np.testing.assert_allclose([by_id[str(a.alert_id)] for a in alerts], graph["real_bogus"][:, 0], atol=1e-5)
    assert [r["skyblink_rb"] for r in survey_rows] != [r["skyblink_rb"] for r in rows]
    # In-sample (these alerts trained its layer), and 2 of these 52 are drb < 0.5: a floor that only a broken
    # shipment misses, on the ordering against the continuous drb (measured 0.694 and +0.528; v1.0 0.644, +0.405).
    ztf_drb = [r for r in survey_rows if r["drb"]]
    drb, ours = _column(ztf_drb, "drb"), _column(ztf_drb, "skyblink_rb")
    assert pairwise_auc(drb, ours) > 0.62 and spearmanr(ours, drb).statistic > 0.3
    # Its card's grouped-fold (held-out) figures beat the pipeline classifier's on the same alerts, each reference.
    folds = load_card("survey_classifier")["real_data_folds"]
    for reference, figure in folds["roc_auc"].items():
        assert figure["auc"] > folds["classifier_v1.0_same_alerts"][reference]["auc"], reference
        assert figure["alerts"] == folds["classifier_v1.0_same_alerts"][reference]["alerts"] > 30


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
