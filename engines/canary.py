"""
Canary promotion: run a candidate (or canary) release in shadow next to production on a fraction
of the work units of a real, ingested night, compare what both find, and move it up one channel
only when the two agree within stated tolerances.

Both sides run the same per-tile program (`skyblink.workers.tile_unit.process_tile`) on the same
units with ONNX Runtime on the CPU; only the model being promoted differs (the other network is
production's on both sides). Compared, per side: detections, how many are matched by the other
side within ``match_radius_px``, and over matched pairs the change of the real/bogus score.

Tolerances (`PromotionTolerances`, from the ``[engines]`` configuration):

* each side's detections matched by the other: at least ``min_matched_fraction``;
* 95th percentile of |real/bogus change| over matched pairs: at most ``max_real_bogus_delta``;
* |candidate count - production count| / production count: at most ``max_count_change``.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from skyblink.workers.program_config import TileProgram
from skyblink.workers.tile_unit import process_tile

from .backends.onnxruntime_runner import OnnxRuntimeRunner
from .catalog import onnx_path
from .channels import ChannelError, Channels, Release

if TYPE_CHECKING:
    from skyblink.storage import NightStore
    from skyblink.workers.tile_unit import WorkUnit

__all__ = ["PromotionError", "PromotionTolerances", "ShadowReport", "promote", "shadow_compare"]

log = logging.getLogger(__name__)


class PromotionError(RuntimeError):
    """The shadow run disagreed with production beyond a tolerance; nothing was promoted."""

    def __init__(self, report: ShadowReport) -> None:
        super().__init__(f"{report.model}: {report.release} not promoted to {report.target}:\n{report.text()}")
        self.report = report


@dataclass(frozen=True, slots=True)
class PromotionTolerances:
    """How closely a shadow run must agree with production. Stable."""

    match_radius_px: float = 1.5
    min_matched_fraction: float = 0.95
    max_real_bogus_delta: float = 0.05
    max_count_change: float = 0.05

    @classmethod
    def from_config(cls, engines: Any) -> PromotionTolerances:
        """From an `EnginesConfig`."""
        return cls(engines.shadow_match_radius_px, engines.promote_min_matched_fraction,
                   engines.promote_max_real_bogus_delta, engines.promote_max_count_change)


@dataclass(slots=True)
class ShadowReport:
    """The comparison of one shadow run. Stable."""

    model: str
    release: str
    baseline: str
    target: str
    units: list[str]
    units_total: int
    production_count: int
    candidate_count: int
    matched: int
    rb_delta_p95: float
    rb_delta_max: float
    tolerances: PromotionTolerances
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every check within tolerance."""
        return all(c["ok"] for c in self.checks)

    def text(self) -> str:
        """The comparison as lines of text."""
        lines = [f"shadow run of {self.release} against {self.baseline} on {len(self.units)} of {self.units_total} work units",
                 f"  detections: production {self.production_count}, candidate {self.candidate_count}, "
                 f"matched within {self.tolerances.match_radius_px:g} px {self.matched}",
                 f"  real/bogus change over matched: p95 {self.rb_delta_p95:.4f}, max {self.rb_delta_max:.4f}"]
        lines += [f"  {c['check']}: {c['value']:.4f} (limit {c['limit']}) {'ok' if c['ok'] else 'FAIL'}" for c in self.checks]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe dict."""
        data = asdict(self)
        data["passed"] = self.passed
        return data


def _match(a: np.ndarray, b: np.ndarray, radius: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching of points ``a`` (N,2) and ``b`` (M,2), nearest pairs first."""
    if not len(a) or not len(b):
        return []
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    pairs = []
    used_a, used_b = set(), set()
    for flat in np.argsort(d, axis=None):
        i, j = divmod(int(flat), d.shape[1])
        if d[i, j] > radius:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((i, j))
    return pairs


def _sample_units(units: list[Any], fraction: float) -> list[Any]:
    """A deterministic fraction of the units (by a hash of their keys), at least one."""
    ranked = sorted(units, key=lambda u: hashlib.sha256(u.key.encode()).hexdigest())
    return sorted(ranked[: max(1, math.ceil(fraction * len(units)))], key=lambda u: u.key)


def _runner(model: str, release: Release | None, channels: Channels) -> Any:
    path = channels.onnx_path(release) if release is not None else onnx_path(model, "fp32")
    return OnnxRuntimeRunner(path, name=f"{model}/{'shipped' if release is None else release.precision}")


def shadow_compare(
    model: Literal["detector", "classifier"],
    release: Release,
    channels: Channels,
    store: NightStore,
    units: Sequence[WorkUnit],
    *,
    fraction: float = 0.1,
    target: str = "canary",
    tolerances: PromotionTolerances | None = None,
    program: TileProgram | None = None,
) -> ShadowReport:
    """
    Run ``release`` in shadow next to production on a fraction of ``units`` of ``store``.

    ``units`` are the night's work units as the driver plans them
    (`skyblink.cluster.planning.plan_tiles`); a deterministic ``fraction`` of them is run.

    ``program`` is the night's per-tile program (`TileProgram.from_config`); default: the
    configuration's defaults.

    Returns
    -------
    ShadowReport
        The comparison and its checks against ``tolerances``.
    """
    program = program or TileProgram()
    tol = tolerances or PromotionTolerances()
    production = {m: channels.get(m, "production") for m in ("detector", "classifier")}
    chosen = _sample_units(list(units), fraction)
    base = {m: _runner(m, production[m], channels) for m in ("detector", "classifier")}
    shadow = dict(base)
    shadow[model] = _runner(model, release, channels)
    prod_n = cand_n = matched = 0
    deltas: list[float] = []
    runners = {id(r): r for r in (*base.values(), *shadow.values())}
    for r in runners.values():
        r.activate()
    try:
        for unit in chosen:
            a = process_tile(unit, store, base["detector"], base["classifier"], program)
            b = process_tile(unit, store, shadow["detector"], shadow["classifier"], program)
            pairs = _match(np.array([(c.x, c.y) for c in a]).reshape(-1, 2), np.array([(c.x, c.y) for c in b]).reshape(-1, 2),
                           tol.match_radius_px)
            prod_n, cand_n, matched = prod_n + len(a), cand_n + len(b), matched + len(pairs)
            deltas += [abs(a[i].real_bogus - b[j].real_bogus) for i, j in pairs]
    finally:
        for r in runners.values():
            r.deactivate()
    p95 = float(np.percentile(deltas, 95)) if deltas else 0.0
    frac_prod = matched / prod_n if prod_n else 1.0
    frac_cand = matched / cand_n if cand_n else 1.0
    count_change = abs(cand_n - prod_n) / prod_n if prod_n else float(cand_n > 0)
    checks = [
        {"check": "production detections matched", "value": frac_prod, "limit": f">= {tol.min_matched_fraction}", "ok": frac_prod >= tol.min_matched_fraction},
        {"check": "candidate detections matched", "value": frac_cand, "limit": f">= {tol.min_matched_fraction}", "ok": frac_cand >= tol.min_matched_fraction},
        {"check": "real/bogus |change| p95", "value": p95, "limit": f"<= {tol.max_real_bogus_delta}", "ok": p95 <= tol.max_real_bogus_delta},
        {"check": "detection count change", "value": count_change, "limit": f"<= {tol.max_count_change}", "ok": count_change <= tol.max_count_change},
    ]
    current = production[model]
    baseline = current.label if current else f"{model} shipped fp32"
    return ShadowReport(model, release.label, baseline, target, [u.key for u in chosen], len(units), prod_n, cand_n, matched,
                        p95, float(max(deltas, default=0.0)), tol, checks)


def promote(
    model: Literal["detector", "classifier"],
    registry_root: Path | str,
    store: NightStore,
    units: Sequence[WorkUnit],
    *,
    to: Literal["canary", "production"] | None = None,
    fraction: float = 0.1,
    tolerances: PromotionTolerances | None = None,
    program: TileProgram | None = None,
) -> ShadowReport:
    """
    Shadow-run the next release of ``model`` and move it up one channel if it agrees.

    Parameters
    ----------
    store : NightStore
        An ingested night's store.
    units : sequence of WorkUnit
        Its work units as the driver plans them (`skyblink.cluster.planning.plan_tiles`).
    to : {"canary", "production"}, optional
        Default: canary when there is a candidate, else production (from the canary).
    program : TileProgram, optional
        The night's per-tile program the shadow run uses (`shadow_compare`).

    Raises
    ------
    ChannelError
        No candidate (or canary) to promote.
    PromotionError
        Outside a tolerance; the channels are unchanged and the message prints the comparison.
    """
    channels = Channels(registry_root)
    if to is None:
        to = "canary" if channels.get(model, "candidate") else "production"
    source = {"canary": "candidate", "production": "canary"}[to]
    release = channels.get(model, source)  # type: ignore[arg-type]
    if release is None:
        msg = f"{model}: no {source} release to promote to {to} (see `skyblink engines channels`)"
        raise ChannelError(msg)
    report = shadow_compare(model, release, channels, store, units, fraction=fraction, target=to, tolerances=tolerances,
                            program=program)
    log.info("%s", report.text())
    if not report.passed:
        raise PromotionError(report)
    channels.advance(model, to)
    return report
