"""
The honest protocol for real/bogus on real survey alerts: every real alert in ../shared/data,
grouped cross-validation by night and survey file, AUC against ZTF drb, ZTF rb and Rubin
reliability separately, with bootstrap 95 % intervals and the negatives of each fold.

    python benchmarks/realbogus_real.py [--recipes NAME ...] [--rule default|as_packet] [--json OUT]
                                        [--cache DIR] [--record-card]

Baselines in the same run: the shipped classifier (skyblink_rb, as shipped, no training on real
data) and the braai d6_m7 port (ZTF only; it *is* drb, so its drb row is 1.000 by construction).
Each recipe (`RECIPES`, `skyblink.engines.training.real_sky.RealSkyRecipe`: which ingredients)
trains the classifier (its head, or the whole network for ``full_*``) once per fold on the
samples made from the other folds' alerts only (injections use those alerts' cutouts only) and
scores the held-out fold; the AUC is over the pooled held-out scores (and per fold where both
classes occur).
"sim AUC" is the same model on simulated validation stamps with truth (seed 1001, not trained on).
Every model choice is made on these folds alone.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from skyblink.engines.catalog import load_network
from skyblink.engines.stamps import ExternalStampRule
from skyblink.engines.training.dataset import TrainingDataConfig, build_training_data
from skyblink.engines.training.real_sky import (
    RealSkyPool,
    RealSkyRecipe,
    build_pool,
    train_head,
    trunk_features,
)
from skyblink.evaluation.real_folds import (
    REFERENCES,
    auc_with_interval,
    load_real_alerts,
    paired_auc_difference,
    roc_auc,
)
from skyblink.evaluation.survey_scores import score_alerts

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RULES = {"default": ExternalStampRule(), "as_packet": ExternalStampRule(difference="as_packet")}
RECIPES = {
    "all": RealSkyRecipe(),
    "no_distill": RealSkyRecipe(distill=False),
    "no_inject": RealSkyRecipe(inject=False),
    "no_residuals": RealSkyRecipe(residuals=False),
    "no_sim": RealSkyRecipe(sim=False),
    "distill_only": RealSkyRecipe(inject=False, residuals=False, sim=False),
    "synthetic_only": RealSkyRecipe(distill=False, sim=False),
    "all_l2_0.1": RealSkyRecipe(l2=0.1),
    "all_l2_0.001": RealSkyRecipe(l2=1e-3),
    "all_head": RealSkyRecipe(layers="head"),
    "full_no_sim": RealSkyRecipe(layers="all", sim=False, epochs=2, learning_rate=3e-4),
    "full_all": RealSkyRecipe(layers="all", epochs=2, learning_rate=3e-4),
}


def head_scores(model: torch.nn.Module, features: np.ndarray) -> np.ndarray:
    """real_bogus of a classifier from its trunk features."""
    with torch.no_grad():
        return torch.sigmoid(model.real_bogus(model.head(torch.from_numpy(features))))[:, 0].numpy()


def torch_scores(model: torch.nn.Module, stamps: np.ndarray) -> np.ndarray:
    """real_bogus of a torch classifier on (N, 3, 63, 63) stamps."""
    with torch.no_grad():
        return model(torch.from_numpy(stamps))[0][:, 0].numpy()


def summarize(name: str, scores: np.ndarray, data, sim_auc: float | None) -> list[dict]:
    """Table rows of one score: per reference, pooled AUC with interval and per-fold AUCs."""
    rows = []
    for ref_name, survey, key in REFERENCES:
        ref = data.reference(survey, key)
        have = np.isfinite(ref) & np.isfinite(scores)
        labels = ref[have] >= 0.5
        auc, lo, hi = auc_with_interval(labels, scores[have])
        per_fold = []
        for k in range(data.n_folds):
            inside = have & (data.folds == k)
            per_fold.append(roc_auc(ref[inside] >= 0.5, scores[inside]) if inside.any() else math.nan)
        rows.append({"model": name, "reference": ref_name, "alerts": int(have.sum()), "negatives": int((~labels).sum()),
                     "auc": auc, "low": lo, "high": hi, "per_fold": per_fold, "sim_auc": sim_auc})
    return rows


def paired_differences(data, score: np.ndarray, baseline: np.ndarray) -> dict[str, tuple[float, float, float]]:
    """Per reference: AUC(score) - AUC(baseline) on the same alerts, with its paired bootstrap 95 % interval."""
    out = {}
    for ref_name, survey, key in REFERENCES:
        ref = data.reference(survey, key)
        have = np.isfinite(ref) & np.isfinite(score) & np.isfinite(baseline)
        out[ref_name] = paired_auc_difference(ref[have] >= 0.5, score[have], baseline[have])
    return out


def paired_line(data, score: np.ndarray, baseline: np.ndarray) -> str:
    """`paired_differences` as one printed line."""
    return "; ".join(f"{ref} {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for ref, (d, lo, hi) in paired_differences(data, score, baseline).items())


def record_card(data, rows: list[dict], rule: str) -> None:
    """Write the shipped classifier's real-data fold figures into its card (the ONNX hashes are untouched)."""
    from datetime import UTC, datetime

    from skyblink.engines.catalog import model_dir

    path = model_dir("classifier") / "card.json"
    card = json.loads(path.read_text())
    refs = {name for name, _, _ in REFERENCES}
    card["real_data_folds"] = {
        "protocol": "benchmarks/realbogus_real.py: every real alert in shared/data, folds grouped by night and survey file",
        "measured_at": datetime.now(UTC).isoformat(timespec="minutes"),
        "stamp_rule": rule,
        "alerts": len(data.alerts),
        "folds": [{k: ({"alerts": v[0], "negatives": v[1]} if k in refs else v) for k, v in row.items()}
                  for row in data.fold_table()],
        "roc_auc": {r["reference"]: {"alerts": r["alerts"], "negatives": r["negatives"], "auc": round(r["auc"], 4),
                                     "ci95": [round(r["low"], 4), round(r["high"], 4)],
                                     "per_fold": [None if math.isnan(v) else round(v, 4) for v in r["per_fold"]]}
                    for r in rows},
        "targets": {"ZTF drb": 0.90, "Rubin reliability": 0.85},
    }
    path.write_text(json.dumps(card, indent=1, allow_nan=False) + "\n")
    print(f"recorded in {path}")


def main() -> None:
    """Run the protocol and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="*", default=["all"], choices=sorted(RECIPES))
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--rule", choices=sorted(RULES), default="default",
                        help="survey stamp rule for the shipped classifier and the training pool")
    parser.add_argument("--record-card", action="store_true",
                        help="write the shipped classifier's fold figures into its model card (real_data_folds)")
    parser.add_argument("--cache", type=Path, help="folder to keep the training pool's features in between runs")
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_real_alerts(SHARED)
    print(f"stamp rule {args.rule}; {len(data.alerts)} distinct real alerts with cutouts, {data.n_folds} folds (read in {time.perf_counter() - start:.1f} s)\n")
    print("| fold | alerts | survey nights | ZTF drb: alerts (< 0.5) | ZTF rb: alerts (< 0.5) | Rubin reliability: alerts (< 0.5) | files |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for row in data.fold_table():
        cells = " | ".join(f"{row[r][0]} ({row[r][1]})" for r, _, _ in REFERENCES)
        print(f"| {row['fold']} | {row['alerts']} | {row['nights']} | {cells} | {', '.join(row['files'])} |")
    sim_val = build_training_data(TrainingDataConfig(fields=2, exposures_per_field=3, seed=1001, workers=1)).stamps
    shipped = score_alerts(data.alerts, rule=RULES[args.rule], backend="onnxruntime", model="classifier")  # v1.0
    rows = []
    rows += summarize("skyblink_rb v1.0 (shipped)", np.array([s.skyblink_rb for s in shipped], float), data,
                      roc_auc(sim_val.real, torch_scores(load_network("classifier"), sim_val.stamps)))
    rows += summarize("braai port (d6_m7)", np.array([math.nan if s.braai_drb is None else s.braai_drb for s in shipped]), data, None)
    t0 = time.perf_counter()
    cache = args.cache / f"realbogus_real_pool_{args.rule}.npz" if args.cache else None
    if cache is not None and cache.is_file():
        saved = np.load(cache)
        pool = RealSkyPool(saved["kind"], saved["owner"], saved["rb"], saved["cls"], saved["features"],
                           saved["stamps"] if "stamps" in saved else None)
        sim_features = saved["sim_features"]
    else:
        pool = build_pool(data.alerts, RealSkyRecipe(), rule=RULES[args.rule])
        sim_features = trunk_features(load_network("classifier"), sim_val.stamps)
        if cache is not None:
            np.savez(cache, kind=pool.kind, owner=pool.owner, rb=pool.rb, cls=pool.cls, features=pool.features,
                     stamps=pool.stamps, sim_features=sim_features)
    alert_rows = pool.kind == "alert"
    counts = {k: int((pool.kind == k).sum()) for k in ("alert", "inject", "residual", "sim")}
    print(f"pool: {counts}, features in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in args.recipes:
        recipe = RECIPES[name]
        oof = np.full(len(data.alerts), np.nan)
        sims = []
        t0 = time.perf_counter()
        for k in range(data.n_folds):
            model = train_head(pool, data.folds != k, recipe)
            if recipe.layers == "all":  # the trunk changed: score the stamps themselves
                oof[data.folds == k] = torch_scores(model, pool.stamps[alert_rows][data.folds == k])
                sims.append(roc_auc(sim_val.real, torch_scores(model, sim_val.stamps)))
            else:
                oof[data.folds == k] = head_scores(model, pool.features[alert_rows][data.folds == k])
                sims.append(roc_auc(sim_val.real, head_scores(model, sim_features)))
            print(f"    fold {k} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        print(f"  {name}: {time.perf_counter() - t0:.0f} s for {data.n_folds} folds", flush=True)
        rows += summarize(f"recipe {name}", oof, data, float(np.mean(sims)))
    print(f"\nROC AUC (label: reference >= 0.5), pooled over held-out folds, bootstrap 95 % interval; per-fold AUC "
          f"(- where a fold lacks a class). sim AUC: simulated validation stamps ({len(sim_val.real)}, {int(sim_val.real.sum())} real), mean over folds.")
    print("| model | reference | alerts (neg.) | AUC [95 % CI] | per fold " + " ".join(str(k) for k in range(data.n_folds)) + " | sim AUC |")
    print("|---|---|---:|---:|---|---:|")
    for r in rows:
        folds = " ".join("-" if math.isnan(v) else f"{v:.2f}" for v in r["per_fold"])
        sim = "" if r["sim_auc"] is None else f"{r['sim_auc']:.3f}"
        print(f"| {r['model']} | {r['reference']} | {r['alerts']} ({r['negatives']}) | {r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {folds} | {sim} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    if args.record_card:
        record_card(data, [r for r in rows if r["model"].startswith("skyblink_rb")], args.rule)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
