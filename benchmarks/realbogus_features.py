"""
Physical triplet features (`skyblink.evaluation.stamp_features`: the classic real/bogus features
of Bloom et al. 2012, Brink et al. 2013, Goldstein et al. 2015) as a real/bogus score on real
survey alerts, alone and beside braai's zero-shot logit and v1.0's logit, in the grouped folds of
the honest protocol (`benchmarks/realbogus_real.py`: pooled held-out ROC AUC against ZTF drb, ZTF
rb and Rubin reliability, 2,000-resample bootstrap intervals, per-fold AUCs).

    python benchmarks/realbogus_distill.py pool --out DIR/pool.npz            # once, ~94 s
    python benchmarks/realbogus_braai.py --pool DIR/pool.npz --cache DIR \\
        --recipes zero_shot both_no_sim braai_only_sim                       # once: both trunks' features
    python benchmarks/realbogus_features.py --pool DIR/pool.npz --braai-cache DIR [--stack] [--json OUT]

What is trained, per fold and on the training folds' samples only: an L2 logistic regression
(scipy L-BFGS, features standardised on the fold's training samples, L2 strength fixed a priori
at ``--l2`` = 1.0 on the standardised weights, i.e. scikit-learn's C = 1; the ``*_nested`` models
choose it from `L2_GRID` by an inner leave-one-training-fold-out AUC, never looking at the held-out
fold); ``gbt_*``: scikit-learn's HistGradientBoostingClassifier with `GBT_PARAMS` fixed a priori
(scikit-learn is not a skyblink dependency: ``.venv/bin/pip install scikit-learn`` for them; without
it they are left out). Inputs (`FeatureRecipe.inputs`): the 16 physical features, the two logits
(v1.0's and braai's own layer on the pedestal-20 sigma stamps, from the braai cache), or both.
Training samples (`SHARES`): the training folds' alerts with their packet score as a soft target
(drb, else rb; Rubin reliability); ``*_fs`` add the injections/residuals made from those alerts and
the pool's 644 simulated stamps (loss shares 0.5 / 0.2 / 0.3, as the braai recipes); the ablations
``*_fakes`` and ``*_sim`` add one of the two (0.7 / 0.3). `CONTRASTS` pairs each model with the
same model on the logits only, which isolates what the physical features add. The previous best
heads (``both_no_sim``, ``braai_only_sim``) are retrained from the same cache with
`realbogus_braai.train_output`, so the paired bootstrap differences compare the same alerts.
``--stack``: ``both_no_sim``'s logit stacked with the physical features in the same logistic
regression on the training alerts, the training alerts' logits out-of-fold (inner
leave-one-training-fold-out fits of ``both_no_sim``), against the same stack on the logit alone.

"sim AUC": each fold's model on the 782 simulated validation stamps (seed 1001, never trained
on), mean of the folds; "pool sim AUC": on the pool's 644 simulated stamps (seed 107; trained on
by the ``*_fs`` and ``*_sim`` models, so an honest figure only for the others). Every choice is made on these
folds; the folds' held-out AUCs are what is reported, not a selection criterion.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # scikit-learn's trees: one core (a shared 2-core box)

import argparse
import importlib.util
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from realbogus_real import SHARED, paired_line, summarize

#: L2 strengths the nested models choose from (standardised weights; 1.0 = scikit-learn's C = 1).
L2_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class FeatureRecipe:
    """One logistic model: which inputs, which training samples, which L2."""

    inputs: str  # "phys", "logits", "phys_logits"
    samples: str  # "alerts" (training alerts, soft packet target), "fs" (+ fakes 0.2, pool sim 0.3), "fakes", "sim"
    l2: float | None = None  # None: --l2
    nested: bool = False  # choose the L2 from L2_GRID by inner leave-one-training-fold-out
    model: str = "logistic"  # or "gbt": scikit-learn's HistGradientBoostingClassifier, GBT_PARAMS


RECIPES = {
    "phys": FeatureRecipe("phys", "alerts"),
    "phys_fs": FeatureRecipe("phys", "fs"),
    "logits": FeatureRecipe("logits", "alerts"),
    "logits_fs": FeatureRecipe("logits", "fs"),
    "phys_logits": FeatureRecipe("phys_logits", "alerts"),
    "phys_logits_fs": FeatureRecipe("phys_logits", "fs"),
    "phys_logits_nested": FeatureRecipe("phys_logits", "alerts", nested=True),
    "phys_logits_fs_nested": FeatureRecipe("phys_logits", "fs", nested=True),
    "gbt_phys_logits": FeatureRecipe("phys_logits", "alerts", model="gbt"),
    "gbt_phys_logits_fs": FeatureRecipe("phys_logits", "fs", model="gbt"),
    # ablations of phys_logits_fs (which ingredient carries it): alerts 0.7 + fakes 0.3, alerts 0.7 + pool sim 0.3
    "phys_logits_fakes": FeatureRecipe("phys_logits", "fakes"),
    "phys_logits_sim": FeatureRecipe("phys_logits", "sim"),
}
#: The same model and samples with the two logits only: the paired contrast that isolates the physical features.
CONTRASTS = {"phys_logits": "logits", "phys_logits_fs": "logits_fs"}
#: Fixed a priori (not tuned): shallow, slow, regularised trees for a few hundred samples.
GBT_PARAMS = {"max_iter": 100, "learning_rate": 0.05, "max_depth": 3, "min_samples_leaf": 10,
              "l2_regularization": 1.0, "random_state": 0}
SHARES = {"fs": {"alert": 0.5, "fake": 0.2, "sim": 0.3}, "fakes": {"alert": 0.7, "fake": 0.3, "sim": 0.0},
          "sim": {"alert": 0.7, "fake": 0.0, "sim": 0.3}, "alerts": {"alert": 1.0, "fake": 0.0, "sim": 0.0}}


def model_inputs(phys: np.ndarray) -> np.ndarray:
    """The physical features as the logistic model sees them: S/N-like columns through asinh(x / 5)."""
    from skyblink.evaluation.stamp_features import FEATURE_NAMES

    x = phys.copy()
    for name in ("snr", "sci_snr", "ref_snr"):
        i = FEATURE_NAMES.index(name)
        x[:, i] = np.arcsinh(x[:, i] / 5.0)
    return x


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float):
    """
    L2 logistic regression with soft targets: minimise sum w_i BCE_i + l2 / 2 |beta|^2 over the
    standardised inputs (the weights sum to the number of samples; the intercept is not penalised).
    Returns a function inputs -> logit.
    """
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-9, std, 1.0)
    z = (x - mean) / std
    w = weight * len(weight) / weight.sum()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        beta, b = theta[:-1], theta[-1]
        t = z @ beta + b
        value = float(np.sum(w * (-y * log_expit(t) - (1 - y) * log_expit(-t)))) + 0.5 * l2 * float(beta @ beta)
        g = w * (expit(t) - y)
        return value, np.concatenate([z.T @ g + l2 * beta, [g.sum()]])

    res = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    beta, b = res.x[:-1], res.x[-1]
    return lambda q: ((q - mean) / std) @ beta + b


def fit_gbt(x: np.ndarray, y: np.ndarray, weight: np.ndarray):
    """Gradient-boosted trees (scikit-learn, not a skyblink dependency) on hard labels y >= 0.5; returns inputs -> logit."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(**GBT_PARAMS).fit(x, y >= 0.5, sample_weight=weight * len(weight) / weight.sum())
    return model.decision_function


def bad_pixel_fraction(alert) -> float:
    """
    Fraction of the cutouts' pixels, as read (not the 63 x 63 padding), that are non-finite, masked
    sentinels or exactly zero; mean of the three.
    """
    stamps = alert.stamps
    fractions = []
    for image in stamps.raw if stamps.raw is not None else stamps.triplet:
        a = np.asarray(image, dtype=np.float64)
        bad = ~np.isfinite(a) | (np.abs(np.nan_to_num(a)) >= 1e30) | (a == 0)
        fractions.append(float(bad.mean()))
    return float(np.mean(fractions))


def main() -> None:
    """Run the folds and print the tables."""
    import torch
    from realbogus_braai import RECIPES as BRAAI_RECIPES
    from realbogus_braai import base_network, train_output

    from skyblink.engines.catalog import load_network
    from skyblink.engines.stamps import ExternalStampRule, external_stamps
    from skyblink.engines.training.distill import DistillData, dequantize_stamps
    from skyblink.evaluation.real_folds import (
        REFERENCES,
        load_real_alerts,
        roc_auc,
    )
    from skyblink.evaluation.stamp_features import FEATURE_NAMES, triplet_features

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=Path, required=True, help="from `realbogus_distill.py pool`")
    parser.add_argument("--braai-cache", type=Path, required=True,
                        help="folder of `realbogus_braai.py --cache` (braai_features_p20.npz)")
    have_sklearn = importlib.util.find_spec("sklearn") is not None
    parser.add_argument("--recipes", nargs="*", choices=sorted(RECIPES),
                        default=[r for r, v in RECIPES.items() if v.model != "gbt" or have_sklearn],
                        help="default: all (the gbt_* ones only where scikit-learn is installed)")
    parser.add_argument("--l2", type=float, default=1.0, help="L2 strength of the non-nested models (fixed a priori)")
    parser.add_argument("--stack", action="store_true",
                        help="also stack both_no_sim's logit (out-of-fold within the training folds) with the features")
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_real_alerts(args.data)
    pool = DistillData.load(args.pool)
    if not np.array_equal(np.load(args.pool)["folds"], data.folds):
        sys.exit(f"{args.pool}: its folds differ from the alerts' folds now; rebuild it")
    n = len(data.alerts)
    print("| fold | alerts | survey nights | ZTF drb: alerts (< 0.5) | ZTF rb: alerts (< 0.5) | Rubin reliability: alerts (< 0.5) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in data.fold_table():
        per_ref = [row[r] for r, _, _ in REFERENCES]  # (alerts, negatives) per reference
        counts = " | ".join(f"{c[0]} ({c[1]})" for c in per_ref if isinstance(c, tuple))
        print(f"| {row['fold']} | {row['alerts']} | {row['nights']} | {counts} |")

    # --- physical features (alerts at full precision; fakes and pool sim from the pool's uint8 codes)
    t0 = time.perf_counter()
    stamps = np.stack([external_stamps(a, ExternalStampRule()) for a in data.alerts])
    bad = np.array([bad_pixel_fraction(a) for a in data.alerts])
    saved = np.load(args.braai_cache / "braai_features_p20.npz")
    phys = {"alert": triplet_features(stamps, bad_fraction=bad),
            "fake": triplet_features(dequantize_stamps(pool.fakes).numpy()),
            "sim": triplet_features(dequantize_stamps(pool.sim).numpy()),
            "val": triplet_features(saved["sim_stamps"])}
    print(f"\nfeatures of {sum(len(v) for v in phys.values())} stamps in {time.perf_counter() - t0:.0f} s", flush=True)

    # --- the two logits, from the braai cache (variant 0 = the stamp as it is)
    fa, ff, fs, fh, fv, sim_real = (saved[k] for k in ("alerts", "fakes", "sim", "held", "sim_val", "sim_real"))
    net = base_network(20.0)
    v1 = load_network("classifier").real_bogus
    w1, b1 = v1.weight.detach().numpy()[0], float(v1.bias.detach()[0])
    wb, bb = net.real_bogus.weight.detach().numpy()[0], float(net.real_bogus.bias.detach()[0])

    def logits(f: np.ndarray) -> np.ndarray:
        return np.clip(np.stack([f[:, :128] @ w1 + b1, f @ wb + bb], 1), -12.0, 12.0)

    lg = {"alert": logits(fh), "fake": logits(ff[:, 0]), "sim": logits(fs[:, 0]), "val": logits(fv)}
    sim_pool_real = pool.sim_rb >= 0.5

    def inputs(kind: str, which: str) -> np.ndarray:
        p = model_inputs(phys[kind])
        return {"phys": p, "logits": lg[kind], "phys_logits": np.concatenate([p, lg[kind]], 1)}[which]

    # --- baselines, rescored here
    scored: dict[str, np.ndarray] = {"skyblink_rb v1.0": fh[:, :128] @ w1 + b1, "zero_shot": fh @ wb + bb}
    rows = summarize("skyblink_rb v1.0 (from the cache)", scored["skyblink_rb v1.0"], data,
                     roc_auc(sim_real, fv[:, :128] @ w1 + b1))
    rows += summarize("zero_shot (braai's layer, pedestal 20)", scored["zero_shot"], data, roc_auc(sim_real, fv @ wb + bb))
    def braai_head(name: str, train: np.ndarray) -> tuple[np.ndarray, float]:
        """realbogus_braai's output layer ``name`` trained on the ``train`` alerts' samples, as that script does."""
        recipe = BRAAI_RECIPES[name]
        assert recipe is not None
        keep = train & np.isfinite(pool.teacher).all(1)
        fk_keep = train[pool.fake_owner]
        f = {"alert": fa[keep].reshape(-1, 384), "fake": ff[fk_keep].reshape(-1, 384), "sim": fs.reshape(-1, 384)}
        y = {"alert": pool.teacher[keep].reshape(-1), "fake": np.repeat(pool.fake_label[fk_keep], 8),
             "sim": np.repeat(pool.sim_rb, 8)}
        return train_output(net, f, y, recipe)

    for name in ("both_no_sim", "braai_only_sim"):
        oof, sims = np.full(n, np.nan), []
        for k in range(data.n_folds):
            w, b = braai_head(name, data.folds != k)
            oof[data.folds == k] = fh[data.folds == k] @ w + b
            sims.append(roc_auc(sim_real, fv @ w + b))
        scored[name] = oof
        rows += summarize(f"{name} (retrained from the cache)", oof, data, float(np.mean(sims)))
    print(f"baselines ready ({time.perf_counter() - start:.0f} s)", flush=True)

    # --- univariate: each feature alone on all alerts (descriptive, nothing trained)
    print("\nEach feature alone, all alerts (AUC; < 0.5: lower means real), and its median per stamp kind:")
    print("| feature | ZTF drb | ZTF rb | Rubin rel. | median ZTF | median Rubin | median sim val | median injections | median residuals |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ztf = np.array([a.survey.value == "ztf" for a in data.alerts])
    inj = pool.fake_label >= 0.5
    for i, fname in enumerate(FEATURE_NAMES):
        aucs = []
        for _, survey, key in REFERENCES:
            ref = data.reference(survey, key)
            have = np.isfinite(ref)
            aucs.append(roc_auc(ref[have] >= 0.5, phys["alert"][have, i]))
        meds = [np.median(phys["alert"][ztf, i]), np.median(phys["alert"][~ztf, i]), np.median(phys["val"][:, i]),
                np.median(phys["fake"][inj, i]), np.median(phys["fake"][~inj, i])]
        print(f"| {fname} | " + " | ".join(f"{a:.3f}" for a in aucs) + " | " + " | ".join(f"{m:.3g}" for m in meds) + " |")

    target = pool.packet.astype(np.float64)

    def training_set(train: np.ndarray, recipe: FeatureRecipe) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        share = SHARES[recipe.samples]
        keep = train & np.isfinite(target)
        xs, ys, ws = [inputs("alert", recipe.inputs)[keep]], [target[keep]], [np.full(int(keep.sum()), share["alert"] / max(int(keep.sum()), 1))]
        fk = train[pool.fake_owner]
        if share["fake"] > 0:
            xs.append(inputs("fake", recipe.inputs)[fk])
            ys.append(pool.fake_label[fk].astype(np.float64))
            ws.append(np.full(int(fk.sum()), share["fake"] / int(fk.sum())))
        if share["sim"] > 0:
            xs.append(inputs("sim", recipe.inputs))
            ys.append(pool.sim_rb.astype(np.float64))
            ws.append(np.full(len(pool.sim_rb), share["sim"] / len(pool.sim_rb)))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)

    def nested_l2(outer: int, recipe: FeatureRecipe) -> float:
        """The L2 of `L2_GRID` with the best pooled inner held-out AUC (packet score >= 0.5), outer fold never seen."""
        best = (-1.0, 0.0)
        for l2 in L2_GRID:
            scores, labels = [], []
            for j in range(data.n_folds):
                if j == outer:
                    continue
                inner_train = (data.folds != outer) & (data.folds != j)
                x, y, w = training_set(inner_train, recipe)
                model = fit_logistic(x, y, w, l2)
                held = (data.folds == j) & np.isfinite(target)
                scores.append(model(inputs("alert", recipe.inputs)[held]))
                labels.append(target[held] >= 0.5)
            auc = roc_auc(np.concatenate(labels), np.concatenate(scores))
            if auc >= best[0] - 1e-12:  # ties: the stronger L2
                best = (auc, l2)
        return best[1]

    chosen: dict[str, list[float]] = {}
    recipes_run = list(args.recipes)
    for name in args.recipes:
        recipe = RECIPES[name]
        t0 = time.perf_counter()
        oof, sims, pool_sims, l2s = np.full(n, np.nan), [], [], []
        for k in range(data.n_folds):
            l2 = nested_l2(k, recipe) if recipe.nested else (recipe.l2 if recipe.l2 is not None else args.l2)
            l2s.append(l2)
            fit = fit_gbt if recipe.model == "gbt" else (lambda x, y, w, l2=l2: fit_logistic(x, y, w, l2))
            model = fit(*training_set(data.folds != k, recipe))
            oof[data.folds == k] = model(inputs("alert", recipe.inputs)[data.folds == k])
            sims.append(roc_auc(sim_real, model(inputs("val", recipe.inputs))))
            pool_sims.append(roc_auc(sim_pool_real, model(inputs("sim", recipe.inputs))))
        chosen[name] = l2s
        scored[name] = oof
        rows += summarize(name, oof, data, float(np.mean(sims)))
        for r in rows[-len(REFERENCES):]:
            r["pool_sim_auc"] = float(np.mean(pool_sims))
        l2_text = "trees" if recipe.model == "gbt" else f"L2 per fold {l2s}"
        print(f"  {name}: {time.perf_counter() - t0:.1f} s; {l2_text}; sim AUC per fold "
              f"{' '.join(f'{s:.3f}' for s in sims)}; pool sim AUC {np.mean(pool_sims):.3f}", flush=True)

    if args.stack:  # both_no_sim's logit stacked with the physical features (its training logits out-of-fold)
        t0 = time.perf_counter()
        outer, inner = [], []
        for k in range(data.n_folds):
            outer.append(braai_head("both_no_sim", data.folds != k))
            logit = np.full(n, np.nan)
            for j in range(data.n_folds):
                if j != k:
                    w, b = braai_head("both_no_sim", (data.folds != k) & (data.folds != j))
                    logit[data.folds == j] = fh[data.folds == j] @ w + b
            inner.append(logit)
        for name, use_phys in (("stack_both_no_sim", False), ("stack_phys_both_no_sim", True)):
            oof, sims = np.full(n, np.nan), []
            for k in range(data.n_folds):
                w, b = outer[k]

                def stack_x(p: np.ndarray, logit: np.ndarray, use: bool = use_phys) -> np.ndarray:
                    return np.concatenate([model_inputs(p), logit[:, None]], 1) if use else logit[:, None]

                keep = (data.folds != k) & np.isfinite(target)
                model = fit_logistic(stack_x(phys["alert"][keep], inner[k][keep]), target[keep], np.ones(int(keep.sum())), args.l2)
                held = data.folds == k
                oof[held] = model(stack_x(phys["alert"][held], fh[held] @ w + b))
                sims.append(roc_auc(sim_real, model(stack_x(phys["val"], fv @ w + b))))
            scored[name] = oof
            rows += summarize(name, oof, data, float(np.mean(sims)))
            recipes_run.append(name)
        CONTRASTS["stack_phys_both_no_sim"] = "stack_both_no_sim"
        print(f"  stacking: {time.perf_counter() - t0:.0f} s", flush=True)

    # the all-alerts model's standardised coefficients of the main combination (what it leans on)
    for name in ("phys", "phys_logits"):
        if name in args.recipes:
            recipe = RECIPES[name]
            x, y, w = training_set(np.ones(n, bool), recipe)
            names = {"phys": list(FEATURE_NAMES), "phys_logits": [*FEATURE_NAMES, "v1_logit", "braai_logit"]}[name]
            model = fit_logistic(x, y, w, args.l2)
            coef = model(np.eye(len(names)) * x.std(0) + x.mean(0)) - model(x.mean(0)[None])
            print(f"\n{name}, all alerts, L2 {args.l2:g}: standardised coefficients " +
                  ", ".join(f"{nm} {c:+.2f}" for nm, c in sorted(zip(names, coef, strict=True), key=lambda t: -abs(t[1]))))

    print("\n| model | reference | alerts (neg.) | AUC [95 % CI] | per fold " + " ".join(str(k) for k in range(data.n_folds)) + " | sim AUC | pool sim AUC |")
    print("|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        per = " ".join("-" if math.isnan(v) else f"{v:.2f}" for v in r["per_fold"])
        sim = "" if r["sim_auc"] is None else f"{r['sim_auc']:.3f}"
        psim = f"{r['pool_sim_auc']:.3f}" if "pool_sim_auc" in r else ""
        print(f"| {r['model']} | {r['reference']} | {r['alerts']} ({r['negatives']}) | {r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {per} | {sim} | {psim} |")
    print("\nPaired bootstrap (2,000 resamples of alerts) of AUC(model) - AUC(baseline), per reference:")
    for base in ("skyblink_rb v1.0", "zero_shot", "both_no_sim", "braai_only_sim"):
        print(f"against {base}:")
        for name in recipes_run:
            print(f"  {name}: " + paired_line(data, scored[name], scored[base]))
    print("contrasts, the physical features added to the same model and samples (paired, as above):")
    for name, base in CONTRASTS.items():
        if name in scored and base in scored:
            print(f"  {name} - {base}: " + paired_line(data, scored[name], scored[base]))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "l2": chosen}, indent=1, default=float))


if __name__ == "__main__":
    main()
