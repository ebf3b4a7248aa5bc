"""
Distillation recipes for real/bogus on real survey alerts, in the grouped folds of the honest
protocol (`benchmarks/realbogus_real.py`, `skyblink.engines.real_folds`).

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

from skyblink.engines.training.distill import VARIANTS, DistillData, DistillRecipe, augment, quantize_stamps, train_distilled

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

    from skyblink.engines.braai_port import braai_normalize_batch, load_braai
    from skyblink.engines.real_folds import load_real_alerts
    from skyblink.engines.score_external import ExternalStampRule, external_stamps
    from skyblink.engines.training.real_sky import RealSkyRecipe, alert_targets, build_pool
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
    from skyblink.engines.real_folds import load_real_alerts, roc_auc
    from skyblink.engines.score_external import ExternalStampRule, external_stamps, score_alerts
    from skyblink.engines.training.dataset import TrainingDataConfig, build_training_data

    torch.set_num_threads(2)
    data = load_real_alerts(args.data or SHARED)
    folds = np.load(args.pool)["folds"]
    if not np.array_equal(folds, data.folds):
        sys.exit(f"{args.pool}: its folds differ from the alerts' folds now; rebuild it with `pool`")
    stamps = np.stack([external_stamps(a, ExternalStampRule()) for a in data.alerts])
    sim_val = build_training_data(TrainingDataConfig(fields=2, exposures_per_field=3, seed=1001, workers=1)).stamps
    shipped = score_alerts(data.alerts, backend="onnxruntime")
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
            sim_all = roc_auc(sim_val.real, torch_scores(_model_from_npz(npz, "all"), sim_val.stamps))
        rows += summarize(f"{name}", oof, data, float(np.mean(sims)))
        print(f"{name}: sim AUC per fold {' '.join(f'{s:.3f}' for s in sims)}; the all-alerts model {sim_all:.3f}")
    print("| model | reference | alerts (neg.) | AUC [95 % CI] | per fold " + " ".join(str(k) for k in range(data.n_folds)) + " | sim AUC |")
    print("|---|---|---:|---:|---|---:|")
    for r in rows:
        per = " ".join("-" if math.isnan(v) else f"{v:.2f}" for v in r["per_fold"])
        sim = "" if r["sim_auc"] is None else f"{r['sim_auc']:.3f}"
        print(f"| {r['model']} | {r['reference']} | {r['alerts']} ({r['negatives']}) | {r['auc']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {per} | {sim} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))


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
    s.add_argument("--data", type=Path, help="the shared data folder (default ../shared/data beside the checkout)")
    args = parser.parse_args()
    {"pool": cmd_pool, "train": cmd_train, "score": cmd_score}[args.step](args)


if __name__ == "__main__":
    main()
