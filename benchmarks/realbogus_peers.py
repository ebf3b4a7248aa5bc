"""
Our classifier next to ZTF's braai (d6_m7), on the same real ZTF cutouts and on simulated stamps
with truth.

    python benchmarks/realbogus_peers.py

Real cutouts: every ZTF alert scored by d6_m7 in ../shared/data (ztf-avro-alert, fink-client).
There is no truth for them; the packet's own drb is the reference: ROC AUC of a score against
drb >= 0.5, and Spearman rank correlation with drb. Simulated: the classifier's validation
night (seed 1001, not seen in training), truth real/bogus labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from skyblink.engines.backends import OnnxRuntimeRunner
from skyblink.engines.catalog import onnx_path
from skyblink.engines.stamps import sigma_triplet
from skyblink.engines.training.dataset import TrainingDataConfig, build_training_data
from skyblink.engines.training.metrics import roc_auc
from skyblink.evaluation.braai_port import braai_normalize, braai_normalize_batch, load_braai
from skyblink.storage.alerts.ztf_cutouts import cutouts_from_record, is_ztf_alert, iter_avro_records

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def ztf_alerts() -> list:
    alerts = []
    for folder in ("ztf-avro-alert/alerts", "fink-client"):
        for path in sorted((SHARED / folder).glob("*.avro")):
            for record in iter_avro_records(path):
                if is_ztf_alert(record):
                    cut = cutouts_from_record(record, source=path)
                    if cut.drbversion == "d6_m7":
                        alerts.append(cut)
    return alerts


def ours(stamps: np.ndarray) -> np.ndarray:
    with OnnxRuntimeRunner(onnx_path("classifier", "fp32")) as runner:
        return runner.infer({"stamps": stamps})["real_bogus"][:, 0]


def braai(stamps: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_braai()(torch.from_numpy(stamps)).numpy()[:, 0]


def main() -> None:
    alerts = ztf_alerts()
    drb = np.array([a.drb for a in alerts])
    our_real = ours(np.stack([sigma_triplet(*a.triplet) for a in alerts]))
    braai_real = braai(np.stack([braai_normalize(*a.triplet) for a in alerts]))
    labels = drb >= 0.5
    print(f"real ZTF cutouts: {len(alerts)} alerts scored by d6_m7, {labels.sum()} with drb >= 0.5")
    print(f"{'score':<28} {'AUC vs drb>=0.5':>16} {'Spearman vs drb':>16}")
    for name, score in (("skyblink classifier", our_real), ("braai port (d6_m7)", braai_real)):
        print(f"{name:<28} {roc_auc(labels, score):>16.3f} {spearmanr(score, drb).statistic:>16.3f}")

    val = build_training_data(TrainingDataConfig(fields=2, seed=1001)).stamps
    braai_sim = braai(braai_normalize_batch([tuple(s) for s in val.stamps]))
    print(f"\nsimulated stamps with truth: {len(val.stamps)} stamps, {val.real.sum()} real (transient, variable, moving)")
    print(f"{'score':<28} {'AUC vs truth':>16}")
    for name, score in (("skyblink classifier", ours(val.stamps)), ("braai port (d6_m7)", braai_sim)):
        print(f"{name:<28} {roc_auc(val.real, score):>16.3f}")


if __name__ == "__main__":
    main()
