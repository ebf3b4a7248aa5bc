"""
Score real survey alerts (ZTF, Rubin) with skyblink's classifier for survey stamps and, for ZTF, the braai port.

By default the model is ``survey_classifier`` (`skyblink.engines.catalog`): braai's trained
trunk beside the pipeline's classifier, its real/bogus layer trained on the real alerts of
``shared/data`` in grouped folds (its card records them). The pipeline's own ``classifier``,
trained on the simulator, ranks real survey alerts at chance; ``model="classifier"`` scores
with it (the benchmarks' baseline). The classifier sees each alert's stamps as `skyblink.engines.stamps.external_stamps` brings them
to its input (one documented rule, `~skyblink.engines.stamps.ExternalStampRule`: science minus
template, block-averaged to the training pixel scale, sigma units, template depth, noise fill).
`pairwise_auc` measures how well a score orders the alerts as a survey's own score does.

braai (`skyblink.evaluation.braai_port`) applies to ZTF cutouts only (its own pre-processing on the
raw cutouts); it is left empty (None) for Rubin alerts.

Notes
-----
CPU by default (ONNX Runtime through `select_runner`); no GPU memory unless a GPU backend is
chosen. Not thread-safe while a runner is shared.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from skyblink.engines.backends import select_runner
from skyblink.engines.stamps import ExternalStampRule, external_stamps
from skyblink.lazy_import import lazy_module
from skyblink.model_io import CLASSIFIER_CLASSES, ClassifierName
from skyblink.storage.alerts.survey_packets import Survey, SurveyAlert

if TYPE_CHECKING:
    import torch

    from . import braai_port
else:
    torch = lazy_module("torch")  # only when braai runs
    braai_port = lazy_module(".braai_port", __package__)

__all__ = ["AlertScore", "pairwise_auc", "score_alerts"]


@dataclass(frozen=True, slots=True)
class AlertScore:
    """
    Scores of one survey alert. Stable.

    Attributes
    ----------
    alert : SurveyAlert
    skyblink_rb : float or None
        The real/bogus of the model `score_alerts` ran (``survey_classifier`` by default); None when
        the packet has no cutouts.
    skyblink_class : str or None
        The classifier's most probable class.
    braai_drb : float or None
        The braai d6_m7 port's score (ZTF only).
    """

    alert: SurveyAlert
    skyblink_rb: float | None
    skyblink_class: str | None
    braai_drb: float | None


def pairwise_auc(reference: Sequence[float] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """
    ROC AUC of ``score`` against a continuous ``reference`` (the concordance index). Stable.

    Over every pair of alerts whose reference scores differ, the fraction that ``score`` orders
    the same way (ties in ``score`` count one half). For a 0/1 reference this is the ROC AUC.

    Parameters
    ----------
    reference, score : array_like of float, same length

    Returns
    -------
    float
        In [0, 1]; NaN when no pair differs in ``reference``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if ref.shape != s.shape:
        msg = f"reference and score must have the same shape, got {ref.shape} and {s.shape}"
        raise ValueError(msg)
    higher = ref[:, None] > ref[None, :]
    pairs = higher.sum()
    if pairs == 0:
        return math.nan
    wins = ((s[:, None] > s[None, :]) & higher).sum() + 0.5 * ((s[:, None] == s[None, :]) & higher).sum()
    return float(wins / pairs)


def _braai_scores(alerts: Sequence[SurveyAlert]) -> dict[int, float]:
    ztf = [(i, a) for i, a in enumerate(alerts) if a.survey is Survey.ZTF and a.stamps is not None and a.stamps.raw is not None]
    if not ztf:
        return {}
    stamps = braai_port.braai_normalize_batch([a.stamps.raw for _, a in ztf if a.stamps is not None and a.stamps.raw is not None])
    with torch.no_grad():
        drb = braai_port.load_braai()(torch.from_numpy(stamps))[:, 0].numpy()
    return {i: float(v) for (i, _), v in zip(ztf, drb, strict=True)}


def score_alerts(alerts: Sequence[SurveyAlert], *, rule: ExternalStampRule | None = None, braai: bool = True,
                 backend: Literal["auto", "tensorrt", "torch", "onnxruntime"] = "auto", batch: int = 256,
                 model: ClassifierName = "survey_classifier") -> list[AlertScore]:
    """
    Score survey alerts with skyblink's survey classifier (and braai for ZTF). Stable.

    Parameters
    ----------
    alerts : sequence of SurveyAlert
        E.g. `skyblink.storage.alerts.read_survey_files(...).alerts`.
    rule : ExternalStampRule, optional
        Stamp normalisation (default: the documented rule).
    braai : bool
        Also run the braai d6_m7 port on ZTF alerts (needs torch).
    backend : {"auto", "tensorrt", "torch", "onnxruntime"}
        Classifier backend (`select_runner`); ``auto`` is ONNX Runtime on a machine without GPU.
    batch : int
        Stamps per inference call.
    model : {"survey_classifier", "classifier"}
        The network: the one made for survey stamps (default), or the pipeline's simulator-trained one.

    Returns
    -------
    list of AlertScore
        One per alert, in order; an alert without cutouts gets None scores.
    """
    scorable = [i for i, a in enumerate(alerts) if a.stamps is not None]
    rb: dict[int, float] = {}
    cls: dict[int, str] = {}
    if scorable:
        inputs = np.stack([external_stamps(alerts[i], rule) for i in scorable])
        with select_runner(model, backend=backend).runner as runner:
            for start in range(0, len(scorable), batch):
                out = runner.infer({"stamps": inputs[start : start + batch]})
                for j, i in enumerate(scorable[start : start + batch]):
                    rb[i] = float(out["real_bogus"][j, 0])
                    cls[i] = CLASSIFIER_CLASSES[int(np.argmax(out["class_probs"][j]))]
    drb = _braai_scores(alerts) if braai else {}
    return [AlertScore(a, rb.get(i), cls.get(i), drb.get(i)) for i, a in enumerate(alerts)]
