"""
skyblink's classifier (trained on simulations only) on every real ZTF and Rubin alert in
../shared/data, against each packet's own score.

    python benchmarks/real_alerts_score.py [--rule as_packet|zero_fill|no_resample|no_depth]
                                           [--model classifier|survey_classifier]

``--model classifier`` (the default) is the pipeline's simulator-trained classifier, whose figures
this benchmark recorded first; ``survey_classifier`` was trained on these very alerts, so its figures
here are in-sample (its card gives its grouped-fold figures, `benchmarks/realbogus_braai.py`).

Prints, per reference score (ZTF drb, ZTF rb, Rubin reliability): the number of alerts, ROC AUC
with the label "packet score >= 0.5" (where both classes occur), the pairwise AUC against the
continuous packet score (concordance: the fraction of alert pairs ordered like the packet; equal
to the ROC AUC for a 0/1 reference), and Spearman's rank correlation. The braai port's row is the
check that the pipeline reads ZTF's cutouts as ZTF did.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from skyblink.engines.stamps import ExternalStampRule
from skyblink.evaluation.survey_scores import pairwise_auc, score_alerts
from skyblink.storage.alerts.survey_packets import read_survey_files

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RULES = {
    "default": ExternalStampRule(),
    "as_packet": ExternalStampRule(difference="as_packet"),
    "zero_fill": ExternalStampRule(fill="zero"),
    "no_resample": ExternalStampRule(resample=False),
    "no_depth": ExternalStampRule(template_depth=False),
}


def files() -> list[Path]:
    """Every real alert packet file in the shared data."""
    return [*sorted(SHARED.glob("ztf-avro-alert/alerts/*.avro")), *sorted(SHARED.glob("fink-client/*.avro")),
            *sorted(SHARED.glob("braai/[0-9]*.json"))]


def row(name: str, reference: np.ndarray, score: np.ndarray) -> str:
    """One table row."""
    labels = reference >= 0.5
    auc = pairwise_auc(labels, score) if 0 < labels.sum() < len(labels) else math.nan
    return (f"| {name} | {len(reference)} ({labels.sum()} >= 0.5) | {auc:.3f} | {pairwise_auc(reference, score):.3f} "
            f"| {spearmanr(score, reference).statistic:+.3f} |")


def main() -> None:
    """Score and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rule", choices=sorted(RULES), default="default")
    parser.add_argument("--model", choices=("classifier", "survey_classifier"), default="classifier")
    args = parser.parse_args()
    start = time.perf_counter()
    report = read_survey_files(files())
    scores = [s for s in score_alerts(report.alerts, rule=RULES[args.rule], model=args.model) if s.skyblink_rb is not None]
    elapsed = time.perf_counter() - start
    in_sample = " (in-sample: trained on these alerts)" if args.model == "survey_classifier" else ""
    print(f"{len(scores)} real alerts with cutouts, {len(report.errors)} unreadable; {args.model}{in_sample}; rule {args.rule}; "
          f"read + scored in {elapsed:.1f} s")
    print("| reference | alerts | ROC AUC (ref >= 0.5) | pairwise AUC | Spearman |")
    print("|---|---|---:|---:|---:|")
    for survey, key in (("ztf", "drb"), ("ztf", "rb"), ("rubin", "reliability")):
        chosen = [s for s in scores if s.alert.survey == survey and key in s.alert.scores]
        reference = np.array([s.alert.scores[key] for s in chosen])
        print(row(f"{survey} {key}: skyblink classifier", reference, np.array([s.skyblink_rb for s in chosen])))
        if survey == "ztf":
            print(row(f"{survey} {key}: braai port (d6_m7)", reference, np.array([s.braai_drb for s in chosen])))


if __name__ == "__main__":
    main()
