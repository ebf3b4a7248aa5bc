"""
Distillation recipes for real/bogus on real survey alerts, in the grouped folds of the honest
protocol (`benchmarks/realbogus_real.py`, `skyblink.evaluation.real_folds`).

Three steps, so that the training can run on a bare GPU machine (numpy + torch only):

    python benchmarks/realbogus_distill.py pool  --out POOL.npz          # here: readers, braai teacher
    python benchmarks/realbogus_distill.py train --pool POOL.npz --out DIR [--recipes ...] [--device cuda]
    python benchmarks/realbogus_distill.py score --pool POOL.npz --weights DIR [--recipes ...]

``pool`` reads every real alert, builds `skyblink.engines.training.distill.DistillData` (braai on
every view of each ZTF alert's raw cutouts, the injections/residuals and simulated stamps of
`skyblink.engines.training.real_sky.build_pool`) and the fold of each alert. ``train`` trains
each recipe once per fold on the other folds' alerts (and once on all alerts: the candidate to
ship) and writes ``DIR/<recipe>.npz`` (float16 state dicts, key ``fold<k>/<param>`` and
``all/<param>``). ``score`` scores every held-out fold with its fold's model, on the alerts'
full-precision stamps, and prints the protocol's table beside the shipped classifier and the
braai port, with each fold model's AUC on simulated validation stamps (seed 1001).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from skyblink.engines.training.distill import (
    VARIANTS,
    DistillData,
    DistillRecipe,
    augment,
    dequantize_stamps,
    quantize_stamps,
    train_distilled,
)

RECIPES = {
    "braai_all": DistillRecipe(),
    "braai_no_sim": DistillRecipe(sim=False, alert_share=0.7, fake_share=0.3),
    "braai_no_fakes": DistillRecipe(fakes=False, alert_share=0.6, fake_share=0.0),
    "packet_all": DistillRecipe(teacher="packet"),
    "mean_all": DistillRecipe(teacher="braai_mean"),
    "mean_no_sim": DistillRecipe(teacher="braai_mean", sim=False, alert_share=0.7, fake_share=0.3),
    "braai_all_long": DistillRecipe(steps=4000, learning_rate=5e-4),
    "braai_alerts_heavy": DistillRecipe(alert_share=0.7, fake_share=0.1),
}


def _state_to_npz(models: dict[str, torch.nn.Module]) -> dict[str, np.ndarray]:
    return {f"{name}/{k}": v.detach().cpu().numpy().astype(np.float16)
            for name, m in models.items() for k, v in m.state_dict().items()}


def _model_from_npz(npz: np.lib.npyio.NpzFile, name: str) -> torch.nn.Module:
    from skyblink.engines.networks import Classifier

    model = Classifier()
    state = {k.split("/", 1)[1]: torch.from_numpy(npz[k].astype(np.float32)) for k in npz.files if k.startswith(f"{name}/")}
    state = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval()


def cmd_pool(args: argparse.Namespace) -> None:
    """Build the training file here (needs the survey readers)."""
    from realbogus_real import SHARED

    from skyblink.engines.stamps import ExternalStampRule, external_stamps
    from skyblink.engines.training.real_sky import RealSkyRecipe, alert_targets, build_pool
    from skyblink.evaluation.braai_port import braai_normalize_batch, load_braai
    from skyblink.evaluation.real_folds import load_real_alerts
    from skyblink.storage.alerts.survey_packets import Survey

    t0 = time.perf_counter()
    data = load_real_alerts(args.data or SHARED)
    alerts = data.alerts
    stamps = np.stack([external_stamps(a, ExternalStampRule()) for a in alerts])
    packet = alert_targets(alerts)
    teacher = np.repeat(packet[:, None], len(VARIANTS), axis=1)
    braai = load_braai()
    torch.set_num_threads(2)
    n_braai = 0
    for i, a in enumerate(alerts):
        if a.survey is Survey.ZTF and a.stamps is not None and a.stamps.raw is not None:
            views = [[augment(np.asarray(c, np.float32), v) for c in a.stamps.raw] for v in VARIANTS]
            with torch.no_grad():
                teacher[i] = braai(torch.from_numpy(braai_normalize_batch(views)))[:, 0].numpy()
            n_braai += 1
    print(f"braai on {len(VARIANTS)} views of {n_braai} ZTF alerts ({time.perf_counter() - t0:.0f} s)", flush=True)
    pool = build_pool(alerts, RealSkyRecipe(), rule=ExternalStampRule())
    assert pool.stamps is not None
    fake = (pool.kind == "inject") | (pool.kind == "residual")
    sim = pool.kind == "sim"
    out = DistillData(alerts=quantize_stamps(stamps), teacher=teacher.astype(np.float32), packet=packet,
                      survey=np.array([0 if a.survey is Survey.ZTF else 1 for a in alerts]),
                      fakes=quantize_stamps(pool.stamps[fake]), fake_label=pool.rb[fake], fake_owner=pool.owner[fake],
                      sim=quantize_stamps(pool.stamps[sim]), sim_rb=pool.rb[sim], sim_cls=pool.cls[sim])
    out.save(args.out, folds=data.folds)
    print(f"{args.out}: {len(alerts)} alerts, {int(fake.sum())} fakes, {int(sim.sum())} simulated, "
          f"{args.out.stat().st_size / 1e6:.1f} MB ({time.perf_counter() - t0:.0f} s)")


def cmd_train(args: argparse.Namespace) -> None:
    """Train every recipe per fold and on all alerts (any machine with torch)."""
    from skyblink.engines.catalog import load_network

    data = DistillData.load(args.pool)
    folds = np.load(args.pool)["folds"]
    base = load_network("classifier")
    torch.backends.cudnn.benchmark = True
    print(f"device {args.device}: {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}; torch {torch.__version__}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.recipes:
        recipe = RECIPES[name]
        if args.steps:
            recipe = DistillRecipe(**{**recipe.as_dict(), "steps": args.steps})
        t0 = time.perf_counter()
        models = {}
        for k in [*range(int(folds.max()) + 1), -1]:
            models["all" if k < 0 else f"fold{k}"] = train_distilled(data, folds != k, recipe, base=base, device=args.device)
            print(f"  {name} {'all' if k < 0 else f'fold {k}'}: {time.perf_counter() - t0:.1f} s", flush=True)
        np.savez(args.out / f"{name}.npz", recipe=json.dumps(recipe.as_dict()), **_state_to_npz(models))


def cmd_score(args: argparse.Namespace) -> None:
    """Score the held-out folds with the trained fold models; print the protocol's table."""
    from realbogus_real import SHARED, summarize, torch_scores

    from skyblink.engines.catalog import load_network
    from skyblink.engines.stamps import ExternalStampRule, external_stamps
    from skyblink.engines.training.dataset import TrainingDataConfig, build_training_data
    from skyblink.evaluation.real_folds import load_real_alerts, roc_auc
    from skyblink.evaluation.survey_scores import score_alerts
    from skyblink.storage.alerts.survey_packets import Survey

    torch.set_num_threads(2)
    data = load_real_alerts(args.data or SHARED)
    folds = np.load(args.pool)["folds"]
    if not np.array_equal(folds, data.folds):
        sys.exit(f"{args.pool}: its folds differ from the alerts' folds now; rebuild it with `pool`")
    stamps = np.stack([external_stamps(a, ExternalStampRule()) for a in data.alerts])
    sim_val = build_training_data(TrainingDataConfig(fields=2, exposures_per_field=3, seed=1001, workers=1)).stamps
    shipped = score_alerts(data.alerts, backend="onnxruntime", model="classifier")  # v1.0, the baseline
    rows = summarize("skyblink_rb v1.0 (shipped)", np.array([s.skyblink_rb for s in shipped], float), data,
                     roc_auc(sim_val.real, torch_scores(load_network("classifier"), sim_val.stamps)))
    rows += summarize("braai port (d6_m7)", np.array([math.nan if s.braai_drb is None else s.braai_drb for s in shipped]),
                      data, None)
    for name in args.recipes:
        path = args.weights / f"{name}.npz"
        if not path.is_file():
            print(f"{path}: missing, skipped")
            continue
        with np.load(path) as npz:
            oof = np.full(len(data.alerts), np.nan)
            sims = []
            for k in range(data.n_folds):
                model = _model_from_npz(npz, f"fold{k}")
                oof[data.folds == k] = torch_scores(model, stamps[data.folds == k])
                sims.append(roc_auc(sim_val.real, torch_scores(model, sim_val.stamps)))
                if args.diagnose:  # the same fold model on its own training alerts: fit, not a held-out figure
                    train = data.folds != k
                    ref = data.reference(Survey.ZTF, "drb")
                    have = train & np.isfinite(ref)
                    fit = roc_auc(ref[have] >= 0.5, torch_scores(model, stamps[have]))
                    print(f"  {name} fold {k}: AUC vs ZTF drb on its own training alerts {fit:.3f} "
                          f"({int(have.sum())}, {int((ref[have] < 0.5).sum())} negatives)")
            sim_all = roc_auc(sim_val.real, torch_scores(_model_from_npz(npz, "all"), sim_val.stamps))
        rows += summarize(f"{name}", oof, data, float(np.mean(sims)))
        print(f"{name}: sim AUC per fold {' '.join(f'{s:.3f}' for s in sims)}; the all-alerts model {sim_all:.3f}")
    if args.diagnose:  # the teacher itself, on the held-out alerts of each fold
        pool = DistillData.load(args.pool)
        rows += summarize("teacher: braai, mean of 32 views", np.where(pool.survey == 0, pool.teacher.mean(axis=1), np.nan),
                          data, None)
    print("| model | reference | alerts (neg.) | AUC [95 % CI] | per fold " + " ".join(str(k) for k in range(data.n_folds)) + " | sim AUC |")
    print("|---|---|---:|---:|---|---:|")
    for r in rows:
        per = " ".join("-" if math.isnan(v) else f"{v:.2f}" for v in r["per_fold"])
        sim = "" if r["sim_auc"] is None else f"{r['sim_auc']:.3f}"
        print(f"| {r['model']} | {r['reference']} | {r['alerts']} ({r['negatives']}) | {r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {per} | {sim} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


def cmd_head(args: argparse.Namespace) -> None:
    """The CPU variant: only the shipped classifier's output layer, on its frozen trunk's features of every view."""
    from realbogus_real import SHARED, head_scores, summarize

    from skyblink.engines.catalog import load_network
    from skyblink.engines.stamps import ExternalStampRule, external_stamps
    from skyblink.engines.training.real_sky import (
        RealSkyPool,
        RealSkyRecipe,
        train_head,
        trunk_features,
    )
    from skyblink.evaluation.real_folds import load_real_alerts

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    data = load_real_alerts(args.data or SHARED)
    pool = DistillData.load(args.pool)
    trunk = load_network("classifier")
    n, v = pool.teacher.shape
    views = np.concatenate([augment(dequantize_stamps(pool.alerts).numpy(), var) for var in VARIANTS])  # view-major
    feats = trunk_features(trunk, np.concatenate([views, dequantize_stamps(pool.fakes).numpy(),
                                                  dequantize_stamps(pool.sim).numpy()]))
    held = trunk_features(trunk, np.stack([external_stamps(a, ExternalStampRule()) for a in data.alerts]))
    print(f"trunk features of {len(feats)} samples in {time.perf_counter() - t0:.0f} s", flush=True)
    nf, ns = len(pool.fake_owner), len(pool.sim_rb)
    kind = np.concatenate([np.full(n * v, "alert"), np.where(pool.fake_label == 1, "inject", "residual"), np.full(ns, "sim")])
    owner = np.concatenate([np.tile(np.arange(n), v), pool.fake_owner, np.full(ns, -1)])
    cls = np.concatenate([np.full(n * v + nf, -1), pool.sim_cls])
    teachers = {"braai": pool.teacher.T.reshape(-1), "braai_mean": np.repeat(pool.teacher.mean(1)[None], v, 0).reshape(-1),
                "packet": np.repeat(pool.packet[None], v, 0).reshape(-1)}
    rows = []
    for teacher in args.teachers:
        rb = np.concatenate([teachers[teacher], pool.fake_label, pool.sim_rb]).astype(np.float32)
        real_pool = RealSkyPool(kind, owner, rb, cls, feats)
        for recipe_name, recipe in (("all", RealSkyRecipe()), ("no_sim", RealSkyRecipe(sim=False))):
            oof = np.full(n, np.nan)
            for k in range(data.n_folds):
                model = train_head(real_pool, data.folds != k, recipe)
                oof[data.folds == k] = head_scores(model, held[data.folds == k])
            rows += summarize(f"head, {teacher} teacher on 32 views, {recipe_name}", oof, data, None)
    for r in rows:
        per = " ".join("-" if math.isnan(x) else f"{x:.2f}" for x in r["per_fold"])
        print(f"| {r['model']} | {r['reference']} | {r['alerts']} ({r['negatives']}) | {r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {per} |")
    print(f"total {time.perf_counter() - t0:.0f} s")


def main() -> None:
    """Parse the step and run it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("pool")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, help="the shared data folder (default ../shared/data beside the checkout)")
    t = sub.add_parser("train")
    t.add_argument("--pool", type=Path, required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--recipes", nargs="*", default=["braai_all"], choices=sorted(RECIPES))
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--steps", type=int, help="override every recipe's steps (a quick check)")
    s = sub.add_parser("score")
    s.add_argument("--pool", type=Path, required=True)
    s.add_argument("--weights", type=Path, required=True)
    s.add_argument("--recipes", nargs="*", default=["braai_all"], choices=sorted(RECIPES))
    s.add_argument("--json", type=Path)
    s.add_argument("--diagnose", action="store_true",
                   help="also each fold model's AUC on its own training alerts, and the teacher's on all")
    s.add_argument("--data", type=Path, help="the shared data folder (default ../shared/data beside the checkout)")
    h = sub.add_parser("head")
    h.add_argument("--pool", type=Path, required=True)
    h.add_argument("--teachers", nargs="*", default=["braai", "braai_mean", "packet"])
    h.add_argument("--data", type=Path, help="the shared data folder (default ../shared/data beside the checkout)")
    args = parser.parse_args()
    {"pool": cmd_pool, "train": cmd_train, "score": cmd_score, "head": cmd_head}[args.step](args)


if __name__ == "__main__":
    main()
