"""
Bytes a remote site sends the centre in one night: its tiles, or only its confident alerts.

    python benchmarks/alerts_edge.py [--exposures N] [--ccds N] [--candidates-per-ccd N]
                                     [--real-fraction F] [--min-score S]

Measured here: the stored size of a 1024x1024 16-bit science tile (simulated sky: 1000 ADU
background, Poisson-like noise, a few stars; Blosc-zstd level 5 with bit shuffle, the ingest
default) and the encoded size of alert packets with three 63x63 cutouts (rle gzip, inline).
Assumed (printed with the result): the night's geometry (Rubin-like defaults: 800 visits of 189
CCDs of 4096x4096 = 16 tiles a CCD), the candidates per CCD on the difference images, the fraction
of them that is real, and the real/bogus score distributions (real ~ Beta(8, 1.5), bogus ~
Beta(1, 8)); `estimate_night_traffic` does the arithmetic.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
from numcodecs import Blosc
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from alerts_publish import NIGHT, build_alerts, stamp_pool

from skyblink.storage.alerts import AlertBuilder, encode_alert, estimate_night_traffic


def tile_bytes(rng: np.random.Generator, n: int = 4) -> float:
    """Mean Blosc-zstd size of simulated 1024x1024 uint16 sky tiles."""
    codec = Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)
    sizes = []
    yy, xx = np.mgrid[:1024, :1024]
    for _ in range(n):
        sky = rng.poisson(1000.0, (1024, 1024)).astype(np.float64) + rng.normal(0, 5, (1024, 1024))
        for _ in range(40):
            x0, y0 = rng.uniform(0, 1024, 2)
            sky += rng.uniform(1e3, 5e4) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8.0)
        tile = np.clip(np.round(sky), 0, 65535).astype(np.uint16)
        sizes.append(len(codec.encode(tile)))
    return statistics.mean(sizes)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} PB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposures", type=int, default=800, help="visits a night (assumed)")
    parser.add_argument("--ccds", type=int, default=189, help="CCDs an exposure (assumed)")
    parser.add_argument("--tiles-per-ccd", type=int, default=16, help="1024-px tiles a 4096x4096 CCD")
    parser.add_argument("--candidates-per-ccd", type=float, default=100.0, help="difference-image detections (assumed)")
    parser.add_argument("--real-fraction", type=float, default=0.1, help="fraction of candidates that is real (assumed)")
    parser.add_argument("--min-score", type=float, default=0.5, help="edge real/bogus threshold")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    console = Console()

    per_tile = tile_bytes(rng)
    pool, wcs = stamp_pool(rng)
    alerts = list(build_alerts(500, AlertBuilder(NIGHT), pool, wcs, rng))
    packet_sizes = [encode_alert(a, "s").nbytes for a in alerts]
    n_scores = 100_000
    real = rng.random(n_scores) < args.real_fraction
    scores = np.where(real, rng.beta(8, 1.5, n_scores), rng.beta(1, 8, n_scores)).tolist()
    traffic = estimate_night_traffic(
        exposures=args.exposures, ccds_per_exposure=args.ccds, tiles_per_ccd=args.tiles_per_ccd,
        tile_bytes=per_tile, candidates_per_ccd=args.candidates_per_ccd, packet_bytes=packet_sizes,
        scores=scores, min_score=args.min_score,
    )
    kept_real = float(np.mean(np.asarray(scores)[real] >= args.min_score))
    kept_bogus = float(np.mean(np.asarray(scores)[~real] >= args.min_score))

    console.print(
        f"assumed: {args.exposures} exposures x {args.ccds} CCDs x {args.tiles_per_ccd} tiles; "
        f"{args.candidates_per_ccd:g} candidates a CCD, {args.real_fraction:.0%} real; "
        f"scores real ~ Beta(8, 1.5), bogus ~ Beta(1, 8); threshold {args.min_score}"
    )
    console.print(
        f"measured: stored tile {human(per_tile)} (1024x1024 uint16, Blosc-zstd 5), alert packet "
        f"{human(statistics.mean(packet_sizes))} (3 cutouts, rle gzip); threshold keeps {kept_real:.1%} of real, "
        f"{kept_bogus:.1%} of bogus candidates"
    )
    table = Table(title="bytes sent to the centre per night")
    for column in ("what is shipped", "items", "bytes", "per exposure"):
        table.add_column(column, justify="right")
    table.add_row("science tiles", f"{args.exposures * args.ccds * args.tiles_per_ccd:,}", human(traffic.tile_bytes),
                  human(traffic.tile_bytes / args.exposures))
    table.add_row("every candidate's alert", f"{traffic.candidates:,}", human(traffic.alert_bytes_all),
                  human(traffic.alert_bytes_all / args.exposures))
    table.add_row(f"alerts with real/bogus >= {args.min_score}", f"{traffic.alerts_sent:,}",
                  human(traffic.alert_bytes_filtered), human(traffic.alert_bytes_filtered / args.exposures))
    console.print(table)
    console.print(f"filtered alerts take {traffic.reduction:,.0f}x fewer bytes than the tiles")


if __name__ == "__main__":
    main()
