"""
Where the reduce step of `skyblink night run` spends its time, stage by stage, on a stored night.

    python benchmarks/reduce_stages.py --store STORE [--repeat 2]

The night's unit results must be in the store (a `night run`, or `benchmarks/night_gpus.py`
whose store is kept in its ``--work``). Each stage runs on the previous stage's output, as
`skyblink.reduce.steps.reduce_detections` chains them, and is timed ``repeat`` times (best and
worst printed):

1. read: every unit's results (`UnitStore.read`);
2. CCD contexts: each CCD's WCS, time, band, PSF, noise and zero point (`ccd_context`), which
   `locate` takes once per CCD; and what a context reads of the CCD (metadata, header, WCS) in
   one read of its attributes (`NightStore.ccd_description`) next to three (before);
3. measure: refining positions and measuring trails on the difference stamps (`measure_stamps`);
4. locate: the whole of `locate` (2 and 3 included, on the sky, ids and photometry);
5. merge: tile duplicates (`merge_tile_duplicates`);
6. match: against the references' source catalogs (`match_static`; the catalogs are cached in
   the store by the run);
7. link: tracklets of moving objects (`link_moving`);
8. associate: detections into objects (`associate`);
9. decide: which detections are alerted and why (`decide`).

Prints a table; writes ``reduce_stages.json`` to $OUT when set. CPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from skyblink.cluster.night import plan_night
from skyblink.cluster.results import UnitStore
from skyblink.config import load_config
from skyblink.reduce.measurement import measure_stamps
from skyblink.reduce.steps import (
    associate,
    ccd_context,
    decide,
    link_moving,
    locate,
    match_static,
    merge_tile_duplicates,
    stamps_of,
)
from skyblink.storage import NightStore


def timed(repeat: int, fn: Callable[[], Any]) -> tuple[Any, list[float]]:
    """Run ``fn`` ``repeat`` times; return its last result and each run's seconds."""
    seconds, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - start)
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="a night's store with its unit results")
    parser.add_argument("--night", default="benchmark", help="night name (part of the alert ids)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    config = load_config(overrides={"store": args.store})
    store = NightStore(args.store)
    units, _, exposures = plan_night(store, config)
    results = UnitStore(store.url)
    done = [u for u in units if u.key in results.done(units)]
    if not done:
        raise SystemExit(f"no unit results in {args.store}: run `skyblink night run` on it first")
    night, radius = config.night, config.night.match_radius_arcsec
    rows: list[tuple[str, list[float], str]] = []

    candidates, s = timed(args.repeat, lambda: results.read(done))
    rows.append(("read", s, f"{len(done)} units, {candidates.num_rows} candidates"))
    keys = sorted(set(zip(candidates.column("exposure").to_pylist(), candidates.column("ccd").to_pylist(), strict=True)))
    # A store answers each CCD's context once: every repeat opens the store afresh to time the reads.
    contexts, s = timed(args.repeat, lambda: (lambda fresh: {key: ccd_context(fresh, *key) for key in keys})(NightStore(args.store)))
    rows.append(("CCD contexts", s, f"{len(keys)} CCDs"))
    # What a context reads of a CCD, in one read (as `ccd_context` does) and in the three it took before.
    # Small and noisy: interleaved, 5 times as many repeats.
    one, three = [], []
    for _ in range(5 * args.repeat):
        one += timed(1, lambda: [store.ccd_description(*key) for key in keys])[1]
        three += timed(1, lambda: [(store.ccd_metadata(*key), store.header(*key), store.wcs(*key)) for key in keys])[1]
    rows.append(("CCD attrs x1", one, "metadata, header and WCS from one read of the CCD's attributes"))
    rows.append(("CCD attrs x3", three, "the same in three reads (before)"))
    x, y = candidates.column("x").to_numpy(), candidates.column("y").to_numpy()
    fwhm = np.array([contexts[key].difference_fwhm_px or contexts[key].fwhm_px
                     for key in zip(candidates.column("exposure").to_pylist(), candidates.column("ccd").to_pylist(), strict=True)])
    stamps = stamps_of(candidates)[:, 2]
    offsets = np.column_stack([x - np.round(x), y - np.round(y)])
    _, s = timed(args.repeat, lambda: measure_stamps(stamps, offsets, fwhm))
    rows.append(("measure", s, f"{len(stamps)} stamps"))
    located, s = timed(args.repeat, lambda: locate(candidates, NightStore(args.store), args.night))
    rows.append(("locate (all)", s, "contexts and measure included"))
    merged, s = timed(args.repeat, lambda: merge_tile_duplicates(located, radius))
    rows.append(("merge", s, f"{located.num_rows} -> {merged.num_rows} detections"))
    static, s = timed(args.repeat, lambda: match_static(merged, store, radius, snr_threshold=night.reference_snr_threshold))
    rows.append(("match", s, f"{len(set(static.column('field').to_pylist()))} field(s)"))
    (linked, tracklets), s = timed(args.repeat, lambda: link_moving(static, night))
    rows.append(("link", s, f"{len(tracklets)} tracklets"))
    objects, s = timed(args.repeat, lambda: associate(linked, radius))
    rows.append(("associate", s, f"{len(set(objects.column('object_id').to_pylist()))} objects"))
    decided, s = timed(args.repeat, lambda: decide(objects, night))
    alerted = sum(v is not None for v in decided.column("alert_type").to_pylist())
    rows.append(("decide", s, f"{alerted} alerts"))

    print(f"\nreduce stages of {args.store}: {len(exposures)} exposures, best and worst of {args.repeat}")
    print(f"{'stage':<14} {'best s':>8} {'worst s':>8}  notes")
    for name, seconds, note in rows:
        print(f"{name:<14} {min(seconds):>8.3f} {max(seconds):>8.3f}  {note}")
    chained = sum(min(s) for name, s, _ in rows if name not in ("CCD contexts", "CCD attrs x1", "CCD attrs x3", "measure"))
    print(f"{'chain total':<14} {chained:>8.3f}           read + locate + merge + match + link + associate + decide")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "reduce_stages.json").write_text(json.dumps(
            {"store": args.store, "exposures": len(exposures), "candidates": candidates.num_rows,
             "stages": [{"stage": n, "seconds": s, "notes": note} for n, s, note in rows]}, indent=1))


if __name__ == "__main__":
    main()
