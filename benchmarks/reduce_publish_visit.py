"""
The reduce and publish of one large visit, without a GPU: a Rubin-like visit's candidates written as the GPU actors
write them, then `skyblink night run` on the store (every tile has its result: nothing is dispatched), timed by stage.

    python benchmarks/reduce_publish_visit.py [--ccds 189] [--per-ccd 67] [--rounds 2] [--baseline SITE] [--work DIR]

The visit is simulated (1 exposure of ``--ccds`` CCDs of 1024x1024, one tile each, and its reference) and ingested
once; each CCD gets ``--per-ccd`` (Poisson) synthetic candidates with stamps and real/bogus 0.95, so that about as
many alerts are built and published as a Rubin-size visit gave on one H100 (10,582 from 12,592 candidates).
``--baseline SITE`` (a folder with another skyblink installed by ``pip install --target``) runs the same store with
that code too, interleaved round by round. Each run starts its own redis-server with an empty stream. Prints a table
of the reduce and publish stages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ccds", type=int, default=189)
    parser.add_argument("--per-ccd", type=float, default=67.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="site folder of the code to compare with")
    parser.add_argument("--work", type=Path, default=Path("/tmp/reduce-publish-visit"))
    args = parser.parse_args()
    night, store = args.work / "night", args.work / "store.zarr"
    if not store.exists():
        cli = [sys.executable, "-m", "skyblink.cli"]
        subprocess.run([*cli, "sim", "night", str(night), "--fields", "1", "--exposures", "1", "--ccds", str(args.ccds),
                        "--size", "1024"], check=True, capture_output=True)
        subprocess.run([*cli, "ingest", str(night)], check=True, capture_output=True,
                       env={**os.environ, "SKYBLINK_STORE": str(store)})
        write_candidates(store, args.per_ccd)
    codes = [("this code", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    rows = []
    for round_ in range(args.rounds):
        for label, site in codes:
            report = args.work / f"report-{round_}-{label.replace(' ', '_')}.json"
            shutil.rmtree(args.work / "redis", ignore_errors=True)
            env = {**os.environ, "SKYBLINK_NIGHT__REDIS_DIR": str(args.work / "redis")}
            if site is not None:
                env["PYTHONPATH"] = str(site)
            subprocess.run([sys.executable, "-m", "skyblink.cli", "night", "run", str(night), "--store", str(store),
                            "--report", str(report)], check=True, capture_output=True, env=env, cwd=args.work)
            r = json.loads(report.read_text())
            rows.append((round_ + 1, label, r["candidates"], r["detections"], r["alerts_published"],
                         r["stage_seconds"]["reduce"], r["stage_seconds"]["publish"]))
    print("| round | code | candidates | detections | alerts published | reduce (s) | publish (s) |\n|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| {} | {} | {} | {} | {} | {:.1f} | {:.1f} |".format(*row))


def write_candidates(store_path: Path, per_ccd: float) -> None:
    """Give every planned tile synthetic candidates, stored as a GPU actor stores them."""
    import numpy as np

    from skyblink.cluster.night import plan_night
    from skyblink.cluster.results import store_unit_results
    from skyblink.config import load_config
    from skyblink.storage import NightStore
    from skyblink.workers.tile_unit import CandidateRecord

    config = load_config(overrides={"store": str(store_path)})
    units, _, _ = plan_night(NightStore(config.store), config)
    rng = np.random.default_rng(1)
    probs = (0.02, 0.02, 0.9, 0.02, 0.02, 0.01, 0.01)  # a transient, by the classifier
    for unit in units:
        oy, ox = unit.origin
        records = []
        for _ in range(rng.poisson(per_ccd)):
            y = oy + unit.margin + rng.uniform(0, unit.size)
            x = ox + unit.margin + rng.uniform(0, unit.size)
            stamp = rng.normal(0.0, 1.0, (3, 63, 63)).astype(np.float16)
            stamp[:, 28:35, 28:35] += 20.0
            records.append(CandidateRecord(unit.key, unit.exposure, unit.ccd, float(x), float(y), 0.9,
                                           float(rng.uniform(6, 50)), 0.95, probs, stamp))
        store_unit_results(unit, records)


if __name__ == "__main__":
    main()
