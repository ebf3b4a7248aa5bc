"""
Score a processed simulated night against the simulator's truth, ours and the SEP baseline side
by side (`score_night`, ``skyblink night score``).

Truth (``truth/<exposure>.parquet``) is matched per exposure and CCD in pixels: a detection is
*real* when it lies within ``match_px`` of an injected change (a transient, a brightening variable
or a moving object; for a trailed mover, of its trail segment), otherwise *bogus* (residuals of
static sources, artifacts, noise). The *change magnitude* of an event is its magnitude, or for a
variable the magnitude of its flux above the mean (what the difference image holds).

Metrics
-------
* completeness of alerts per change-magnitude bin, and the 50 % completeness magnitude (where the
  curve, linearly interpolated between bin centres, last falls through 0.5);
* purity of alerts (real / alerted) and the share of real alerts of the right type;
* astrometric error: radial RMS (arcsec) of real point-source detections by S/N;
* real/bogus ROC AUC and the false-positive rate at 1 % false negatives (SEP's score is its S/N);
* linking efficiency (movers detected in 3 or more exposures that have a tracklet made only of
  their detections, at least 3) and false-tracklet rate (tracklets mixing objects or bogus);
* trajectory error of the prediction one hour after the last detection against the simulator's
  ephemeris (`skyblink.sim.events.movers_for_field`), and how often the truth lies inside the
  1-sigma and 68 % error ellipses.

Notes
-----
Reads the night directory and the store; writes only under ``out_dir``. Single process.
Experimental.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.time import Time
from scipy.stats import rankdata

from skyblink.cluster.planning import plan_tiles
from skyblink.config import NightConfig, SimConfig
from skyblink.lazy_import import lazy_module
from skyblink.model_io import CLASSIFIER_CLASSES
from skyblink.sim import read_truth
from skyblink.sim.events import movers_for_field
from skyblink.storage import NightStore
from skyblink.storage.night_files import NightFiles
from skyblink.storage.schemas.tables import detections_schema
from skyblink.workers.program_config import TileProgram

from .sep_baseline import sep_catalog, sep_detections

if TYPE_CHECKING:
    import matplotlib as mpl
    import matplotlib.pyplot as plt
else:
    # Only the plots need matplotlib; `_plots` selects the Agg backend before pyplot's first use.
    mpl = lazy_module("matplotlib")
    plt = lazy_module("matplotlib.pyplot")

__all__ = ["MethodScore", "ScoreReport", "score_catalog", "score_night"]

_REAL_TYPES = ("transient", "variable", "moving")
_SNR_BINS = (5.0, 10.0, 20.0, 50.0, math.inf)
_CHI2_2D_68 = 2.2788  # chi-square (2 dof) quantile 0.68: the 68 % ellipse is 1.515 sigma


@dataclass
class MethodScore:
    """Every figure of one method (ours or SEP) on one night. Stable."""

    method: str
    detections: int = 0
    alerts: int = 0
    real_alerts: int = 0
    purity: float = float("nan")
    type_accuracy: float = float("nan")
    events: int = 0
    completeness_bins: list[dict[str, float]] = field(default_factory=list)
    m50: float = float("nan")
    astrometry_rms_arcsec: list[dict[str, float | None]] = field(default_factory=list)
    astrometry_rms_snr_gt_20: float = float("nan")
    roc_auc: float = float("nan")
    fpr_at_fnr_1pct: float = float("nan")
    roc_curve: dict[str, list[float]] = field(default_factory=dict)
    movers_3plus: int = 0
    movers_linked: int = 0
    linking_efficiency: float = float("nan")
    tracklets: int = 0
    false_tracklets: int = 0
    false_tracklet_rate: float = float("nan")
    trajectory_error_1h_median_arcsec: float = float("nan")
    trajectory_error_1h_rms_arcsec: float = float("nan")
    trajectory_inside_1sigma: float = float("nan")
    trajectory_inside_68: float = float("nan")
    linking_by_rate: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ScoreReport:
    """Ours and the baseline on one night, with the targets. Stable."""

    night_dir: str
    store: str
    ours: MethodScore
    sep: MethodScore | None
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-safe dict (NaN as null)."""
        return _clean(asdict(self))


def _clean(value: Any) -> Any:  # any JSON-able value
    if isinstance(value, float):
        return None if not math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _truth_events(night_dir: Path) -> dict[str, Any]:
    """Truth per exposure: arrays of every row, with the change magnitude of each event."""
    night = json.loads((night_dir / "night.json").read_text())
    out = {}
    for record in night["exposures"]:
        table = read_truth(night_dir / record["truth"])
        kind = np.asarray(table["type"]).astype(str)
        mag = np.asarray(table["mag"], float)
        mean = np.asarray(table["mean_mag"], float)
        change = mag.copy()
        var = kind == "variable"
        excess = 10.0 ** (-0.4 * mag[var]) - 10.0 ** (-0.4 * mean[var])
        change[var] = np.where(excess > 0, -2.5 * np.log10(np.where(excess > 0, excess, 1.0)), np.nan)
        event = np.isin(kind, _REAL_TYPES) & np.isfinite(change)
        out[record["exposure_id"]] = {
            "id": np.asarray(table["id"]).astype(str), "type": kind, "ccd": np.asarray(table["ccd"], int),
            "x": np.asarray(table["x"], float), "y": np.asarray(table["y"], float),
            "ra": np.asarray(table["ra"], float), "dec": np.asarray(table["dec"], float),
            "change_mag": change, "event": event, "trailed": np.asarray(table["trailed"], bool),
            "trail_length_px": np.nan_to_num(np.asarray(table["trail_length_px"], float)),
            "trail_angle_deg": np.nan_to_num(np.asarray(table["trail_angle_deg"], float)),
            "field": record["field"],
        }
    return {"night": night, "exposures": out}


def _match(catalog: pa.Table, truth: dict[str, Any], match_px: float) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Index of the truth event each detection matches (-1: bogus), its exposure, and the event keys."""
    n = catalog.num_rows
    which = np.full(n, -1, int)
    exposures = np.array(catalog.column("exposure_id").to_pylist(), dtype=object)
    ccds = catalog.column("ccd_num").to_numpy()
    xs, ys = catalog.column("x").to_numpy(), catalog.column("y").to_numpy()
    for exposure, t in truth["exposures"].items():
        rows = np.flatnonzero(exposures == exposure)
        ev = np.flatnonzero(t["event"])
        if not len(rows) or not len(ev):
            continue
        half = 0.5 * t["trail_length_px"][ev] * t["trailed"][ev]
        angle = np.radians(t["trail_angle_deg"][ev])
        ux, uy = np.cos(angle), np.sin(angle)
        for i in rows:
            same = t["ccd"][ev] == ccds[i]
            dx, dy = xs[i] - t["x"][ev], ys[i] - t["y"][ev]
            along = np.clip(dx * ux + dy * uy, -half, half)
            dist = np.hypot(dx - along * ux, dy - along * uy)
            dist = np.where(same, dist, np.inf)
            k = int(np.argmin(dist))
            if dist[k] <= match_px:
                which[i] = ev[k]
    return which, exposures, []


def _completeness(detected: np.ndarray, mags: np.ndarray, bins: np.ndarray) -> tuple[list[dict[str, float]], float]:
    rows = []
    centres, values = [], []
    for lo, hi in zip(bins[:-1], bins[1:], strict=True):
        inside = (mags >= lo) & (mags < hi)
        total = int(inside.sum())
        found = int(detected[inside].sum())
        frac = found / total if total else float("nan")
        rows.append({"mag_lo": float(lo), "mag_hi": float(hi), "events": total, "found": found, "completeness": frac})
        if total:
            centres.append(0.5 * (lo + hi))
            values.append(frac)
    m50 = float("nan")
    for k in range(len(values) - 1, 0, -1):  # the last crossing from >= 0.5 to < 0.5
        if values[k - 1] >= 0.5 > values[k]:
            f = (values[k - 1] - 0.5) / (values[k - 1] - values[k])
            m50 = centres[k - 1] + f * (centres[k] - centres[k - 1])
            break
    return rows, m50


def _roc(scores: np.ndarray, real: np.ndarray) -> tuple[float, float, dict[str, list[float]]]:
    n_real, n_bogus = int(real.sum()), int((~real).sum())
    if not n_real or not n_bogus:
        return float("nan"), float("nan"), {}
    ranks = rankdata(scores)
    auc = (ranks[real].sum() - n_real * (n_real + 1) / 2) / (n_real * n_bogus)
    cut = np.quantile(scores[real], 0.01, method="lower")
    fpr = float((scores[~real] >= cut).mean())
    order = np.argsort(-scores, kind="stable")
    tpr_curve = np.concatenate([[0.0], np.cumsum(real[order]) / n_real])
    fpr_curve = np.concatenate([[0.0], np.cumsum(~real[order]) / n_bogus])
    step = max(1, len(order) // 400)
    return float(auc), fpr, {"fpr": fpr_curve[::step].tolist() + [1.0], "tpr": tpr_curve[::step].tolist() + [1.0]}


def score_catalog(catalog: pa.Table, truth: dict[str, Any], method: str, *, score_column: str = "real_bogus",
                  match_px: float = 2.0, mag_bins: np.ndarray | None = None) -> MethodScore:
    """
    Score one detections catalog against the truth.

    Parameters
    ----------
    catalog : pyarrow.Table
        The night's detections catalog (``catalogs/detections.parquet``) or `sep_catalog`'s.
    truth : dict
        From the night directory (`score_night` reads it).
    method : str
        Its name in the report.
    score_column : str
        The real/bogus score for the ROC.
    match_px : float
        A detection within this many pixels of an event (its trail) is real.
    mag_bins : ndarray, optional
        Edges of the completeness bins (default 0.5 mag from 15 to 26).

    Returns
    -------
    MethodScore
    """
    bins = np.arange(15.0, 26.01, 0.5) if mag_bins is None else mag_bins
    out = MethodScore(method=method, detections=catalog.num_rows)
    which, exposures, _ = _match(catalog, truth, match_px)
    real = which >= 0
    alert_type = np.array(catalog.column("alert_type").to_pylist(), dtype=object)
    alerted = np.array([t is not None for t in alert_type])
    out.alerts, out.real_alerts = int(alerted.sum()), int((alerted & real).sum())
    out.purity = out.real_alerts / out.alerts if out.alerts else float("nan")
    true_type = np.array([truth["exposures"][e]["type"][k] if k >= 0 else "" for e, k in zip(exposures, which, strict=True)],
                         dtype=object)
    good = alerted & real
    out.type_accuracy = float((alert_type[good] == true_type[good]).mean()) if good.any() else float("nan")
    # Completeness of alerts over every (exposure, event).
    found: set[tuple[str, int]] = {(str(e), int(k)) for e, k, a in zip(exposures, which, alerted, strict=True) if k >= 0 and a}
    mags, detected = [], []
    for exposure, t in truth["exposures"].items():
        for k in np.flatnonzero(t["event"]):
            mags.append(t["change_mag"][k])
            detected.append((exposure, int(k)) in found)
    out.events = len(mags)
    out.completeness_bins, out.m50 = _completeness(np.array(detected, bool), np.array(mags, float), bins)
    # Astrometry of real point sources.
    snr = catalog.column("snr").to_numpy().astype(float)
    sep_arcsec = np.full(catalog.num_rows, np.nan)
    point = np.zeros(catalog.num_rows, bool)
    if real.any():
        idx = np.flatnonzero(real)
        t_ra = np.array([truth["exposures"][exposures[i]]["ra"][which[i]] for i in idx])
        t_dec = np.array([truth["exposures"][exposures[i]]["dec"][which[i]] for i in idx])
        point[idx] = ~np.array([truth["exposures"][exposures[i]]["trailed"][which[i]] for i in idx])
        sep_arcsec[idx] = SkyCoord(catalog.column("ra").to_numpy()[idx] * u.deg, catalog.column("dec").to_numpy()[idx] * u.deg).separation(
            SkyCoord(t_ra * u.deg, t_dec * u.deg)).arcsec
    for lo, hi in zip(_SNR_BINS[:-1], _SNR_BINS[1:], strict=True):
        inside = point & (snr >= lo) & (snr < hi)
        out.astrometry_rms_arcsec.append({"snr_lo": lo, "snr_hi": hi if math.isfinite(hi) else None, "n": int(inside.sum()),
                                          "rms": float(np.sqrt(np.mean(sep_arcsec[inside] ** 2))) if inside.any() else float("nan")})
    bright = point & (snr > 20)
    out.astrometry_rms_snr_gt_20 = float(np.sqrt(np.mean(sep_arcsec[bright] ** 2))) if bright.any() else float("nan")
    scores = catalog.column(score_column).to_numpy().astype(float)
    out.roc_auc, out.fpr_at_fnr_1pct, out.roc_curve = _roc(scores, real)
    _score_linking(out, catalog, truth, which, exposures)
    return out


def _score_linking(out: MethodScore, catalog: pa.Table, truth: dict[str, Any], which: np.ndarray, exposures: np.ndarray) -> None:
    ident = np.array([truth["exposures"][e]["id"][k] if k >= 0 else "" for e, k in zip(exposures, which, strict=True)], dtype=object)
    kind = np.array([truth["exposures"][e]["type"][k] if k >= 0 else "" for e, k in zip(exposures, which, strict=True)], dtype=object)
    mover_exposures: dict[str, set[str]] = {}
    for i in np.flatnonzero(kind == "moving"):
        mover_exposures.setdefault(str(ident[i]), set()).add(str(exposures[i]))
    eligible = {m for m, seen in mover_exposures.items() if len(seen) >= 3}
    tracklet = catalog.column("tracklet_id").to_pylist()
    groups: dict[int, list[int]] = {}
    for row_index, t in enumerate(tracklet):
        if t is not None:
            groups.setdefault(int(t), []).append(row_index)
    linked: set[str] = set()
    false = 0
    config = SimConfig(**truth["night"]["config"])
    errors: list[float] = []
    inside1: list[bool] = []
    inside68: list[bool] = []
    rows = catalog.to_pylist() if groups else []
    for members in groups.values():
        ids = {str(ident[i]) for i in members}
        if len(ids) == 1 and next(iter(ids)) and kind[members[0]] == "moving":
            mover = next(iter(ids))
            linked.add(mover)
            row = rows[members[0]]
            field_index = int(mover.split("-")[0][1:])
            movers = movers_for_field(config, field_index)
            k = int(np.flatnonzero(movers.ids == mover)[0])
            utc = float(Time(row["predicted_mjd"], format="mjd", scale="tai").utc.mjd)
            ra, dec = movers.position_at(utc)
            _score_prediction(row, float(ra[k]), float(dec[k]), errors, inside1, inside68)
        else:
            false += 1
    out.movers_3plus = len(eligible)
    out.movers_linked = len(eligible & linked)
    out.linking_efficiency = out.movers_linked / out.movers_3plus if out.movers_3plus else float("nan")
    out.tracklets = len(groups)
    out.false_tracklets = false
    out.false_tracklet_rate = false / len(groups) if groups else 0.0
    if errors:
        out.trajectory_error_1h_median_arcsec = float(np.median(errors))
        out.trajectory_error_1h_rms_arcsec = float(np.sqrt(np.mean(np.square(errors))))
        out.trajectory_inside_1sigma = float(np.mean(inside1))
        out.trajectory_inside_68 = float(np.mean(inside68))
    movers_all = {}
    for fld in {int(m.split("-")[0][1:]) for m in eligible}:
        mv = movers_for_field(config, fld)
        movers_all.update({str(i): float(r) * 60.0 for i, r in zip(mv.ids, mv.rate_arcsec_per_min, strict=True)})
    edges = [0.0, 60.0, 300.0, 1000.0, 4000.0]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        pool = [m for m in eligible if lo <= movers_all.get(m, -1) < hi]
        out.linking_by_rate.append({"rate_lo": lo, "rate_hi": hi, "movers": len(pool), "linked": sum(m in linked for m in pool)})


def _score_prediction(row: dict[str, Any], ra: float, dec: float, errors: list[float], inside1: list[bool],
                      inside68: list[bool]) -> None:
    predicted = SkyCoord(row["predicted_ra"] * u.deg, row["predicted_dec"] * u.deg)
    true = SkyCoord(ra * u.deg, dec * u.deg)
    offset = predicted.spherical_offsets_to(true)
    east, north = float(offset[0].to_value(u.arcsec)), float(offset[1].to_value(u.arcsec))
    errors.append(math.hypot(east, north))
    pa = math.radians(row["predicted_err_pa"])
    major_axis = np.array([math.sin(pa), math.cos(pa)])
    minor_axis = np.array([math.cos(pa), -math.sin(pa)])
    d = np.array([east, north])
    m2 = (d @ major_axis / max(row["predicted_err_major"], 1e-9)) ** 2 + (d @ minor_axis / max(row["predicted_err_minor"], 1e-9)) ** 2
    inside1.append(m2 <= 1.0)
    inside68.append(m2 <= _CHI2_2D_68)


def _targets(ours: MethodScore, sep: MethodScore | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if sep is not None:
        depth_ok = ours.m50 >= sep.m50 + 0.3 and ours.purity >= sep.purity
        out["depth"] = {"target": "m50 >= SEP m50 + 0.3 mag at equal or better purity", "ours_m50": ours.m50, "sep_m50": sep.m50,
                        "ours_purity": ours.purity, "sep_purity": sep.purity, "met": bool(depth_ok)}
    out["astrometry"] = {"target": "radial RMS <= 0.05 arcsec at S/N > 20", "value": ours.astrometry_rms_snr_gt_20,
                         "met": bool(ours.astrometry_rms_snr_gt_20 <= 0.05)}
    out["linking"] = {"target": ">= 95 % of movers with >= 3 detections at <= 1 % false tracklets",
                      "efficiency": ours.linking_efficiency, "false_tracklet_rate": ours.false_tracklet_rate,
                      "met": bool(ours.linking_efficiency >= 0.95 and ours.false_tracklet_rate <= 0.01)}
    return out


def score_night(night_dir: Path | str, store_url: str, *, out_dir: Path | str | None = None, baseline: bool = True,
                config: Any = None, plots: bool = True) -> ScoreReport:
    """
    Score a processed simulated night (and the SEP baseline on its difference images).

    Parameters
    ----------
    night_dir : Path or str
        Written by ``skyblink sim night`` (``night.json`` and ``truth/``).
    store_url : str
        The store ``skyblink night run`` processed it into (``catalogs/detections.parquet``).
    out_dir : Path or str, optional
        Where ``score.json`` and the PNG plots go (default ``<store>/score`` for a local store).
    baseline : bool
        Also run and score SEP on the same difference images (needs ``sep``).
    config : NightConfig, optional
        Reduce settings for the baseline (default: the embedded defaults).
    plots : bool
        Write the PNG plots.

    Returns
    -------
    ScoreReport

    Raises
    ------
    FileNotFoundError
        The night has no ``night.json`` (not simulated) or the store no detections catalog (not run).
    """
    night_dir = Path(night_dir)
    if not (night_dir / "night.json").exists():
        msg = f"{night_dir}: no night.json; score needs a night simulated by `skyblink sim night` (it holds the truth)"
        raise FileNotFoundError(msg)
    files = NightFiles(store_url)
    path = files.catalog_path("detections")
    if not files.exists(path):
        msg = f"{store_url}: no catalogs/detections.parquet; run `skyblink night run {night_dir} --store {store_url}` first"
        raise FileNotFoundError(msg)
    catalog = files.read(path, detections_schema(CLASSIFIER_CLASSES))
    truth = _truth_events(night_dir)
    ours = score_catalog(catalog, truth, "skyblink")
    sep_score = None
    if baseline:
        night_config = config or NightConfig()
        store = NightStore(store_url)
        units = []
        for key in store.exposure_keys("exposure"):
            size = int(store.image(key, store.ccd_names(key)[0]).shape[0])
            units.extend(plan_tiles(store, key, size=min(1024, size), margin=night_config.margin))
        program = TileProgram(margin=night_config.margin, snr_threshold=night_config.snr_threshold,
                              psf_match=night_config.psf_match)
        sep_table = sep_catalog(sep_detections(units, store, program), store, night_config)
        sep_score = score_catalog(sep_table, truth, "SEP", score_column="snr")
    report = ScoreReport(str(night_dir), store_url, ours, sep_score, _targets(ours, sep_score))
    target = Path(out_dir) if out_dir is not None else Path(files.root) / "score"
    target.mkdir(parents=True, exist_ok=True)
    if plots:
        report.plots = _plots(report, target)
    (target / "score.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return report


def _plots(report: ScoreReport, out: Path) -> list[str]:
    mpl.use("Agg")

    methods = [m for m in (report.ours, report.sep) if m is not None]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        centres = [0.5 * (b["mag_lo"] + b["mag_hi"]) for b in m.completeness_bins if b["events"]]
        values = [b["completeness"] for b in m.completeness_bins if b["events"]]
        ax.plot(centres, values, marker="o", label=f"{m.method} (m50 {m.m50:.2f})")
    ax.axhline(0.5, color="grey", lw=0.5)
    ax.set(xlabel="change magnitude", ylabel="completeness of alerts", ylim=(0, 1.05), title="Completeness")
    ax.legend()
    paths.append(str(out / "completeness.png"))
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for m in methods:
        if m.roc_curve:
            ax.plot(m.roc_curve["fpr"], m.roc_curve["tpr"], label=f"{m.method} (AUC {m.roc_auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="Real/bogus ROC (SEP: S/N)")
    ax.legend()
    paths.append(str(out / "roc.png"))
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.4
    for j, m in enumerate(methods):
        labels = [f"{b['rate_lo']:.0f}-{b['rate_hi']:.0f}" for b in m.linking_by_rate]
        eff = [b["linked"] / b["movers"] if b["movers"] else 0.0 for b in m.linking_by_rate]
        ax.bar(np.arange(len(labels)) + j * width, eff, width, label=f"{m.method} ({m.movers_linked}/{m.movers_3plus}, "
               f"{m.false_tracklets} false of {m.tracklets})")
        ax.set_xticks(np.arange(len(labels)) + width / 2, labels)
    ax.set(xlabel="rate (arcsec/hour)", ylabel="linked fraction (movers in >= 3 exposures)", ylim=(0, 1.05), title="Linking")
    ax.legend()
    paths.append(str(out / "linking.png"))
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths
