"""
The accuracy gate: an INT8 graph enters the registry only when it keeps the fp32 model's
accuracy on a held-out simulated validation set.

* Detector: completeness in every magnitude bin within ``completeness_pp`` percentage points of
  fp32 (the faintest bins included, which is where careless INT8 loses sources).
* Classifier: ROC AUC (real/bogus) within ``auc`` of fp32.

The metrics are the model cards' own (`skyblink.engines.training.train._evaluate_detector` and
``_evaluate_classifier``), run on both graphs through ONNX Runtime, on the same simulated
exposures (fixed seeds, different from the training and the calibration seeds).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["AccuracyGateError", "GateResult", "GateTolerances", "ValidationSpec", "compare", "evaluate", "run_gate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GateTolerances:
    """How far INT8 may fall behind fp32. Stable."""

    completeness_pp: float = 1.0
    auc: float = 0.005


@dataclass(frozen=True, slots=True)
class ValidationSpec:
    """
    The held-out simulated validation set. Stable.

    The detector is validated on the shipped model cards' validation night (training seed 1 +
    1000: ``exposures`` of ``image_size``, median r-band conditions) plus ``dark_deep_exposures``
    dark, deep exposures (g band, 120 s, references 20 deep: seed + 3000), where the faintest
    sources are; the classifier on the stamps of the validation night.
    """

    exposures: int = 10
    exposures_per_field: int = 5
    image_size: int = 1024
    seed: int = 1
    workers: int = 2
    dark_deep_exposures: int = 10

    def detector_exposures(self) -> list[tuple[Any, int, int]]:
        """(simulator config, field, exposure) of every validation exposure of the detector."""
        from skyblink.config import SimConfig  # noqa: PLC0415

        from .training.train import _validation_data  # noqa: PLC0415

        val = _validation_data(self.training_config())
        sim = val.sim_config()
        out = [(sim, f, e) for f in range(val.fields) for e in range(val.exposures_per_field)]
        if self.dark_deep_exposures:
            per_field = min(self.exposures_per_field, self.dark_deep_exposures)
            fields = -(-self.dark_deep_exposures // per_field)
            dark = SimConfig(fields=fields, exposures_per_field=per_field, image_size=self.image_size,
                             seed=self.seed + 3000, band="g", exptime=120.0, reference_depth=20)
            out += [(dark, f, e) for f in range(fields) for e in range(per_field)][: self.dark_deep_exposures]
        return out

    def training_config(self) -> Any:
        """The `TrainingConfig` whose validation data is this set."""
        from .training.dataset import TrainingDataConfig  # noqa: PLC0415
        from .training.train import TrainingConfig  # noqa: PLC0415

        data = TrainingDataConfig(exposures_per_field=self.exposures_per_field, image_size=self.image_size,
                                  seed=self.seed, workers=self.workers)
        return TrainingConfig(data=data, validation_exposures=self.exposures)


class AccuracyGateError(RuntimeError):
    """The INT8 graph fell behind fp32; the message prints the failing bins. Not retryable as is."""

    def __init__(self, result: GateResult) -> None:
        super().__init__(f"{result.model}: INT8 refused by the accuracy gate:\n" + result.report(failures_only=True))
        self.result = result


@dataclass(slots=True)
class GateResult:
    """
    The gate's comparison of INT8 with fp32. Stable.

    Attributes
    ----------
    model : str
    rows : list of dict
        Detector: per magnitude bin ``mag_lo, mag_hi, n, fp32, int8, delta_pp, ok``; classifier:
        one row ``metric="roc_auc", fp32, int8, delta, ok``.
    passed : bool
    tolerances : GateTolerances
    fp32, int8 : dict
        The full validation metrics of both graphs.
    """

    model: str
    rows: list[dict[str, Any]]
    tolerances: GateTolerances
    fp32: dict[str, Any] = field(default_factory=dict)
    int8: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every row is within tolerance."""
        return all(r["ok"] for r in self.rows)

    @property
    def failures(self) -> list[dict[str, Any]]:
        """The rows outside tolerance."""
        return [r for r in self.rows if not r["ok"]]

    def report(self, *, failures_only: bool = False) -> str:
        """A plain-text table (one line per bin or metric)."""
        rows = self.failures if failures_only else self.rows
        if self.model == "detector":
            lines = [f"completeness per magnitude bin, tolerance {self.tolerances.completeness_pp:g} pp:",
                     "  mag bin       n   fp32     int8     delta"]
            lines += [f"  {r['mag_lo']:.1f}-{r['mag_hi']:.1f}  {r['n']:4d}  {r['fp32']:6.1%}  {r['int8']:6.1%}  "
                      f"{r['delta_pp']:+6.1f} pp{'' if r['ok'] else '  FAIL'}" for r in rows]
        else:
            lines = [f"classifier ROC AUC, tolerance {self.tolerances.auc:g}:"]
            lines += [f"  fp32 {r['fp32']:.4f}  int8 {r['int8']:.4f}  delta {r['delta']:+.4f}{'' if r['ok'] else '  FAIL'}" for r in rows]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """What goes into the manifest's ``validation``."""
        out: dict[str, Any] = {"gate": "int8-vs-fp32", "passed": self.passed, "tolerances": asdict(self.tolerances), "rows": self.rows}
        if self.model == "detector":
            out["completeness_fp32"] = self.fp32.get("completeness")
            out["completeness_int8"] = self.int8.get("completeness")
        return out


class _OnnxAsModule:
    """An ONNX graph under ONNX Runtime, called like the torch network (what the evaluators call)."""

    def __init__(self, path: Path, input_name: str, threads: int | None = None, batch: int = 256) -> None:
        from .backends.onnxruntime_runner import OnnxRuntimeRunner  # noqa: PLC0415

        self.runner = OnnxRuntimeRunner(path, threads=threads)
        self.runner.activate()
        self.input_name = input_name
        self.batch = batch

    def eval(self) -> _OnnxAsModule:
        return self

    def __call__(self, x: Any) -> tuple[Any, ...]:
        import torch  # noqa: PLC0415

        arr = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        parts = [self.runner.infer({self.input_name: np.ascontiguousarray(arr[i : i + self.batch], np.float32)})
                 for i in range(0, len(arr), self.batch)]
        names = self.runner.output_names
        return tuple(torch.from_numpy(np.concatenate([p[n] for p in parts])) for n in names)

    def close(self) -> None:
        self.runner.deactivate()


def _detector_rows(fp32: dict[str, Any], int8: dict[str, Any], tol: GateTolerances) -> list[dict[str, Any]]:
    ours = {(b["mag_lo"], b["mag_hi"]): b for b in int8["completeness_by_magnitude"]}
    rows = []
    for b in fp32["completeness_by_magnitude"]:
        q = ours[(b["mag_lo"], b["mag_hi"])]  # same truth events: the same bins are populated
        delta = 100.0 * (q["completeness"] - b["completeness"])
        rows.append({"mag_lo": b["mag_lo"], "mag_hi": b["mag_hi"], "n": b["n"], "fp32": b["completeness"],
                     "int8": q["completeness"], "found_fp32": b["found"], "found_int8": q["found"],
                     "delta_pp": round(delta, 3), "ok": abs(delta) <= tol.completeness_pp + 1e-9})
    return rows


def evaluate(model: Literal["detector", "classifier"], onnx: Path | str, validation: ValidationSpec,
             *, stamps: Any = None) -> dict[str, Any]:
    """The model card's validation metrics of one ONNX graph under ONNX Runtime."""
    from .training import train  # noqa: PLC0415

    cfg = validation.training_config()
    net = _OnnxAsModule(Path(onnx), "tiles" if model == "detector" else "stamps")
    try:
        if model == "detector":
            return train._evaluate_detector(net, cfg, exposures=validation.detector_exposures())  # noqa: SLF001 - the model card's own metric
        if stamps is None:
            stamps = _validation_stamps(validation)
        return train._evaluate_classifier(net, stamps)  # noqa: SLF001
    finally:
        net.close()


def _validation_stamps(validation: ValidationSpec) -> Any:
    from .training.dataset import build_training_data  # noqa: PLC0415
    from .training.train import _validation_data  # noqa: PLC0415

    return build_training_data(_validation_data(validation.training_config())).stamps


def compare(model: Literal["detector", "classifier"], fp32: dict[str, Any], int8: dict[str, Any],
            tolerances: GateTolerances | None = None) -> GateResult:
    """The gate's verdict from the validation metrics of both graphs (see `evaluate`)."""
    tol = tolerances or GateTolerances()
    if model == "detector":
        rows = _detector_rows(fp32, int8, tol)
    else:
        delta = int8["roc_auc"] - fp32["roc_auc"]
        rows = [{"metric": "roc_auc", "fp32": fp32["roc_auc"], "int8": int8["roc_auc"], "delta": round(delta, 6),
                 "ok": bool(math.isfinite(delta) and abs(delta) <= tol.auc + 1e-12)}]
    return GateResult(model, rows, tol, fp32, int8)


def run_gate(
    model: Literal["detector", "classifier"],
    fp32_onnx: Path | str,
    int8_onnx: Path | str,
    *,
    validation: ValidationSpec | None = None,
    tolerances: GateTolerances | None = None,
    raise_on_failure: bool = True,
) -> GateResult:
    """
    Compare the INT8 graph with fp32 on the held-out validation set.

    Parameters
    ----------
    model : {"detector", "classifier"}
    fp32_onnx, int8_onnx : Path
    validation : ValidationSpec, optional
        Default: the model cards' validation night.
    tolerances : GateTolerances, optional
    raise_on_failure : bool
        Raise `AccuracyGateError` (printing the failing bins) instead of returning a failed result.

    Raises
    ------
    AccuracyGateError
        INT8 is outside a tolerance, and ``raise_on_failure``.
    """
    validation = validation or ValidationSpec()
    stamps = _validation_stamps(validation) if model == "classifier" else None
    fp32 = evaluate(model, fp32_onnx, validation, stamps=stamps)
    int8 = evaluate(model, int8_onnx, validation, stamps=stamps)
    result = compare(model, fp32, int8, tolerances)
    log.info("accuracy gate for %s: %s\n%s", model, "passed" if result.passed else "FAILED", result.report())
    if not result.passed and raise_on_failure:
        raise AccuracyGateError(result)
    return result
