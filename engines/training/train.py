"""
Train the detector and the classifier on simulated nights and write what ships: the weights,
the fp32 and fp16 ONNX graphs and a model card with the validation metrics.

Training and validation come from different seeds (different skies, events and noise). Seeded:
the same configuration gives the same data; torch's CPU kernels make training itself close to,
not bit-for-bit, reproducible across machines.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from skyblink.config import SimConfig
from skyblink.model_io import CLASSIFIER_CLASSES, DETECTOR_CLASSES, STAMP_SIZE
from skyblink.workers.peaks import find_peaks

from ..catalog import MODEL_VERSIONS, model_dir
from ..export import export_onnx, file_sha256
from ..networks import Classifier, Detector
from .dataset import StampRealism, TrainingDataConfig, build_training_data, exposure_triplet
from .metrics import completeness_by_magnitude, fpr_at_fnr, roc_auc

__all__ = ["CLASSIFIER_DEFAULTS", "CLASSIFIER_REALISM", "DETECTOR_DEFAULTS", "EvaluatedModel", "TrainingConfig", "evaluate_classifier",
           "evaluate_detector", "train_classifier", "train_detector", "validation_data", "write_model"]


class EvaluatedModel(Protocol):
    """What the model cards' evaluators call: a torch network, or a graph under another runtime called like one."""

    def eval(self) -> Any:
        """Switch to inference (torch's ``Module.eval``)."""
        ...

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run on a batch; the outputs in the network's order."""
        ...

log = logging.getLogger(__name__)
MAG_BINS = np.arange(17.0, 27.01, 0.5)


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Hyperparameters and data of one training run. Stable."""

    data: TrainingDataConfig = field(default_factory=TrainingDataConfig)
    validation_exposures: int = 10
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 3e-3
    width: int = 8
    #: The detector's `Detector` stride (1: version 1.0's layout; 2: the space-to-depth stem of version 2.0).
    stride: int = 1
    seed: int = 7
    threads: int = 2


def _focal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on sigmoid heatmaps."""
    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def _gflops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(shape))
    return counter.get_total_flops() / 1e9


def validation_data(cfg: TrainingConfig) -> TrainingDataConfig:
    """The model card's validation night of ``cfg``: other fields and seeds than its training data."""
    fields = max(1, cfg.validation_exposures // cfg.data.exposures_per_field)
    return replace(cfg.data, fields=fields, seed=cfg.data.seed + 1000)


def _json_safe(value: Any) -> Any:
    """Undefined metrics (NaN: no detections, an empty bin) become null; JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_model(name: str, model: torch.nn.Module, card: dict[str, Any], out_root: Path | None) -> dict[str, Any]:
    """
    Write a model's folder (`skyblink.engines.catalog.model_dir`): weights, fp32 and fp16 ONNX
    graphs and ``card.json`` with their sha256 added to ``card`` (its ``onnx`` entry is filled in).

    Parameters
    ----------
    name : str
        The model's name (a key of `MODEL_VERSIONS`).
    model : torch.nn.Module
        The trained network (`skyblink.engines.export.export_onnx` must take it).
    card : dict
        The model card so far; undefined metrics (NaN) become null. A card of the version already
        shipped gets the shipped card's history (`HISTORY_KEYS`) where it sets none of its own.
    out_root : Path, optional
        Models folder; default the package's own (shipping).

    Returns
    -------
    dict
        The card as written.

    Raises
    ------
    TypeError
        ``model`` cannot be exported.
    """
    card.update(_history(name, card))
    out = model_dir(name, out_root)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    card["weights"] = {"file": "weights.pt", "sha256": file_sha256(out / "weights.pt")}
    for precision in ("fp32", "fp16"):
        path = export_onnx(model, out / f"model.{precision}.onnx", precision=precision)
        card.setdefault("onnx", {})[precision] = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    card = _json_safe(card)
    (out / "card.json").write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
    log.info("wrote %s", out)
    return card


#: Card entries that record a model's history rather than its training run (the version it replaced, scored
#: by the same code; what a version changed): a retraining of the same version keeps them from the shipped card.
HISTORY_KEYS = ("previous_version", "changes")


def _history(name: str, card: dict[str, Any]) -> dict[str, Any]:
    """The shipped card's `HISTORY_KEYS` when it is of ``card``'s version and ``card`` does not set them."""
    shipped = model_dir(name) / "card.json"
    if not shipped.is_file():
        return {}
    old = json.loads(shipped.read_text())
    if old.get("version") != card.get("version"):
        return {}
    return {key: old[key] for key in HISTORY_KEYS if key in old and key not in card}


def _card_common(name: str, cfg: TrainingConfig, model: torch.nn.Module, seconds: float) -> dict[str, Any]:
    return {
        "name": name,
        "version": MODEL_VERSIONS[name],
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(seconds, 1),
        "trained_on": f"{platform.machine()} CPU, {cfg.threads} threads, torch {torch.__version__}",
        "data": {"simulator": "skyblink.sim", "train": asdict(cfg.data), "validation": asdict(validation_data(cfg))},
        "hyperparameters": {k: v for k, v in asdict(cfg).items() if k != "data"},
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "onnx": {},
    }


def _fit(model: torch.nn.Module, n: int, batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
         cfg: TrainingConfig, *, say: Callable[[str], None], label: str, start: float) -> None:
    """AdamW with a one-cycle schedule over shuffled mini-batches of sample indices."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    steps = cfg.epochs * -(-n // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.learning_rate, total_steps=steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=gen).split(cfg.batch_size):
            loss = batch_loss(idx, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        say(f"{label} epoch {epoch + 1}/{cfg.epochs}: loss {total / n:.4f} ({time.perf_counter() - start:.0f} s)")


# ------------------------------------------------------------------------------------ detector


#: Detection threshold on the new-source score (max of the transient and moving heatmaps).
DETECTION_THRESHOLD = 0.3


def evaluate_detector(model: Detector | EvaluatedModel, cfg: TrainingConfig, *,
                      exposures: Iterable[tuple[SimConfig, int, Any]] | None = None,
                      render: Callable[[SimConfig, int, Any], tuple[np.ndarray, dict[str, np.ndarray], float]] | None = None,
                      ) -> dict[str, Any]:
    """
    Run on whole validation CCDs; a detection is a peak of max(transient, moving) above
    `DETECTION_THRESHOLD`; it matches a truth transient or mover within 3 px.

    ``exposures`` ((simulator config, field, exposure) triples) replaces the validation night of
    ``cfg``: the INT8 accuracy gate adds dark, deep exposures to it. ``render`` (default
    `exposure_triplet`) makes each exposure's (triplet, truth, limit): the gate's injects more events.
    """
    if exposures is None:
        val = validation_data(cfg)
        sim = val.sim_config()
        exposures = [(sim, f, e) for f in range(val.fields) for e in range(val.exposures_per_field)]
    mags, found, above_limit, n_detections, n_true_detections = [], [], [], 0, 0
    model.eval()
    channels = (DETECTOR_CLASSES.index("transient"), DETECTOR_CLASSES.index("moving"))
    for sim, f, e in exposures:
        triplet, truth, limit = (render or exposure_triplet)(sim, f, e)
        with torch.no_grad():
            heat, off = model(torch.from_numpy(triplet)[None])
        peaks = find_peaks(heat[0].numpy(), threshold=DETECTION_THRESHOLD, offsets=off[0].numpy(), channels=channels)
        events = np.isin(truth["type"].astype(str), ("transient", "moving")) & np.isfinite(truth["mag"])
        ex, ey, em = truth["x"][events], truth["y"][events], truth["mag"][events]
        for x, y, m in zip(ex, ey, em, strict=True):
            d = np.hypot(peaks.x - x, peaks.y - y)
            mags.append(m)
            found.append(bool(len(d) and d.min() <= 3.0))
            above_limit.append(m < limit)
        n_detections += len(peaks)
        for px, py in zip(peaks.x, peaks.y, strict=True):
            n_true_detections += bool(len(ex) and np.hypot(ex - px, ey - py).min() <= 3.0)
    mags_a, found_a, above = np.array(mags), np.array(found), np.array(above_limit, bool)
    return {
        "events": len(mags),
        "events_above_5sigma_limit": int(above.sum()),
        "detections": n_detections,
        "purity": n_true_detections / n_detections if n_detections else float("nan"),
        "completeness": float(found_a.mean()) if len(found_a) else float("nan"),
        "completeness_above_5sigma_limit": float(found_a[above].mean()) if above.any() else float("nan"),
        "completeness_by_magnitude": [b for b in completeness_by_magnitude(mags_a, found_a, MAG_BINS) if b["n"]],
        "match_radius_px": 3.0,
        "threshold": DETECTION_THRESHOLD,
        "score": "max(transient, moving) heatmap",
    }


#: Defaults of the detector run: version 2.0, the space-to-depth network on twice version 1.0's
#: training fields (16; measured 2026-12-07: on 8 it lost completeness at equal purity).
DETECTOR_DEFAULTS = TrainingConfig(stride=2, data=TrainingDataConfig(fields=16))


def train_detector(cfg: TrainingConfig = DETECTOR_DEFAULTS, *, out_root: Path | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """
    Train the detector, validate it on other simulated exposures and write the shipped files.

    Parameters
    ----------
    cfg : TrainingConfig
        Data and hyperparameters.
    out_root : Path, optional
        Models folder (default: the package's ``engines/models``).
    progress : callable, optional
        Called with one line per epoch.

    Returns
    -------
    dict
        The model card written next to the model.
    """
    say = progress or log.info
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    data = build_training_data(cfg.data).detector
    say(f"detector data: {len(data.inputs)} crops of {cfg.data.crop}px in {time.perf_counter() - start:.0f} s")
    x, heat = torch.from_numpy(data.inputs), torch.from_numpy(data.heatmaps)
    off, mask = torch.from_numpy(data.offsets), torch.from_numpy(data.offset_mask)
    model = Detector(width=cfg.width, stride=cfg.stride)

    def detector_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        xb, hb, ob, mb = x[idx], heat[idx], off[idx].clone(), mask[idx]
        if torch.rand(1, generator=gen).item() < 0.5:  # mirror augmentation; x offsets follow
            xb, hb, ob, mb = xb.flip(-1), hb.flip(-1), ob.flip(-1), mb.flip(-1)
            ob[:, 0] = -ob[:, 0]
        if cfg.stride > 1:  # a space-to-depth stem sees stride^2 pixel phases of a source: train on all of them
            dy, dx = (int(v) for v in torch.randint(0, cfg.stride, (2,), generator=gen))
            xb, hb, ob, mb = (t.roll((dy, dx), dims=(-2, -1)) for t in (xb, hb, ob, mb))
        pred_h, pred_o = model(xb)
        return _focal_loss(pred_h, hb) + F.l1_loss(pred_o * mb, ob * mb, reduction="sum") / mb.sum().clamp(min=1.0)

    _fit(model, len(x), detector_loss, cfg, say=say, label="detector", start=start)
    metrics = evaluate_detector(model, cfg)
    seconds = time.perf_counter() - start
    card = _card_common("detector", cfg, model, seconds)
    card.update(
        architecture={"width": cfg.width, "stride": cfg.stride},
        inputs={"tiles": "(B, 3, H, W) float; science, warped reference, difference in sigma units; H, W multiples of 32"},
        outputs={"heatmaps": f"(B, 4, H, W) sigmoid scores for {list(DETECTOR_CLASSES)}", "offsets": "(B, 2, H, W) sub-pixel (dx, dy)"},
        gflops_per_1024_tile=round(_gflops(model, (1, 3, 1024, 1024)), 2),
        training_crops=len(x),
        validation=metrics,
    )
    return write_model("detector", model, card, out_root)


# ---------------------------------------------------------------------------------- classifier


def evaluate_classifier(model: Classifier | EvaluatedModel, stamps: Any) -> dict[str, Any]:
    """The classifier card's metrics (ROC AUC, FPR at 1 % FNR, purity, completeness, per class) on ``stamps``."""
    model.eval()
    with torch.no_grad():
        rb, probs = model(torch.from_numpy(stamps.stamps))
    rb_np, probs_np = rb[:, 0].numpy(), probs.numpy()
    fpr, threshold = fpr_at_fnr(stamps.real, rb_np, 0.01)
    predicted = probs_np.argmax(axis=1)
    real = stamps.real
    found = rb_np >= 0.5
    per_class = {
        name: {"n": int((stamps.labels == i).sum()), "recall": float((predicted[stamps.labels == i] == i).mean()) if (stamps.labels == i).any() else float("nan")}
        for i, name in enumerate(CLASSIFIER_CLASSES)
    }
    return {
        "stamps": len(rb_np),
        "real": int(real.sum()),
        "roc_auc": roc_auc(real, rb_np),
        "fpr_at_1pct_fnr": fpr,
        "threshold_at_1pct_fnr": threshold,
        "purity_at_0.5": float(real[found].mean()) if found.any() else float("nan"),
        "completeness_at_0.5": float(found[real].mean()) if real.any() else float("nan"),
        "completeness_by_magnitude": [b for b in completeness_by_magnitude(stamps.mags[real], found[real], MAG_BINS) if b["n"]],
        # Among stamps with a magnitude (cosmic rays and hot pixels have none) called real in each bin.
        "purity_by_magnitude": [
            {"mag_lo": b["mag_lo"], "mag_hi": b["mag_hi"], "called_real": b["n"], "real": b["found"],
             "purity": b["completeness"]}
            for b in completeness_by_magnitude(stamps.mags[found], real[found], MAG_BINS) if b["n"]
        ],
        "class_accuracy": float((predicted == stamps.labels).mean()),
        "per_class": per_class,
    }


#: Defaults of the classifier run (the detector's are `TrainingConfig()`).
CLASSIFIER_DEFAULTS = TrainingConfig(width=16, epochs=15, batch_size=64)
#: The classifier run with the real-survey effects of `StampRealism` in its training and validation
#: stamps. Experimental: measured 2026-11-26 (benchmarks/BENCHMARKS.md, real alerts) and not shipped.
CLASSIFIER_REALISM = replace(CLASSIFIER_DEFAULTS, data=TrainingDataConfig(realism=StampRealism()))


def train_classifier(cfg: TrainingConfig = CLASSIFIER_DEFAULTS, *,
                     out_root: Path | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """
    Train the real/bogus and class classifier on simulated stamps and write the shipped files.

    Parameters and return as `train_detector`.
    """
    say = progress or log.info
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    train = build_training_data(cfg.data).stamps
    val = build_training_data(validation_data(cfg)).stamps
    say(f"classifier data: {len(train.stamps)} training and {len(val.stamps)} validation stamps in {time.perf_counter() - start:.0f} s")
    x = torch.from_numpy(train.stamps)
    labels = torch.from_numpy(train.labels)
    real = torch.from_numpy(train.real.astype(np.float32))
    counts = torch.bincount(labels, minlength=len(CLASSIFIER_CLASSES)).float().clamp(min=1.0)
    class_weight = (counts.sum() / counts) / (counts.sum() / counts).mean()
    model = Classifier(width=cfg.width)

    def classifier_loss(idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        k = int(torch.randint(0, 4, (1,), generator=gen))
        xb = torch.rot90(x[idx], k, dims=(2, 3))  # the sky has no preferred orientation
        if torch.rand(1, generator=gen).item() < 0.5:
            xb = xb.flip(-1)
        rb_logit, class_logits = model.logits(xb)
        return F.binary_cross_entropy_with_logits(rb_logit[:, 0], real[idx]) + F.cross_entropy(class_logits, labels[idx], weight=class_weight)

    _fit(model, len(x), classifier_loss, cfg, say=say, label="classifier", start=start)
    metrics = evaluate_classifier(model, val)
    seconds = time.perf_counter() - start
    card = _card_common("classifier", cfg, model, seconds)
    card.update(
        architecture={"width": cfg.width},
        inputs={"stamps": f"(B, 3, {STAMP_SIZE}, {STAMP_SIZE}) float; science, reference, difference in sigma units (ZTF/braai order)"},
        outputs={"real_bogus": "(B, 1) probability of a real change", "class_probs": f"(B, 7) softmax over {list(CLASSIFIER_CLASSES)}"},
        gflops_per_stamp=round(_gflops(model, (1, 3, STAMP_SIZE, STAMP_SIZE)), 4),
        training_stamps={name: int((train.labels == i).sum()) for i, name in enumerate(CLASSIFIER_CLASSES)},
        validation=metrics,
    )
    return write_model("classifier", model, card, out_root)
