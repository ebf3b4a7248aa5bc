"""
Alert stream throughput, packet size and Redis memory.

    python benchmarks/alerts_publish.py [--alerts N] [--memory-alerts N] [--maxlen N] [--skip-memory]

Everything runs in one process against a private redis-server (no persistence) on this machine.
Rows, each measured on its own:

* ``cutouts (FITS+gzip)``: `AlertBuilder.build` from three 63x63 float32 noise stamps with a TAN
  WCS, per gzip mode (rle is the default);
* ``Avro encode``: `encode_alert` (schema validation on) of packets that already hold cutouts;
* ``publish (pre-encoded)``: `AlertProducer.publish_encoded` (Lua dedup + XADD MAXLEN ~,
  pipelined batches of 500), cutouts inline, then in the side store;
* ``publish end to end``: `AlertProducer.publish` of `Alert` records (encode + publish);
* ``consume``: `AlertConsumer.run` with a no-op handler (XREADGROUP, decode + validate, XACK);
* ``rerun``: publishing the same alerts again (every one a duplicate).

Then packet sizes next to Rubin's 82 KB bound, and Redis memory (INFO memory) after publishing
``--memory-alerts`` alerts into a stream with MAXLEN ~ ``--maxlen``, scaled to 100k entries.
The figures go into benchmarks/BENCHMARKS.md by hand with the machine, date and command.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from astropy.wcs import WCS
from rich.console import Console
from rich.table import Table

from skyblink.config import AlertsConfig, RedisConfig
from skyblink.storage.alerts import (
    Alert,
    AlertBuilder,
    AlertConsumer,
    AlertProducer,
    AlertType,
    Band,
    ClassProbabilities,
    Detection,
    connect,
    cut_stamp,
    dedup_key,
    encode_alert,
    stream_name,
)
from skyblink.storage.redis_server import RedisServer

RUBIN_BOUND_BYTES = 82_000
NIGHT = "20261125"
POOL = 32  # distinct stamp sets; alerts cycle through them


def image_wcs(shape: tuple[int, int]) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    wcs.wcs.cd = np.array([[-0.6 / 3600, 0.0], [0.0, 0.6 / 3600]])
    return wcs


def stamp_pool(rng: np.random.Generator) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]], WCS]:
    """Noise stamps like real ones: sky 1000 +- 30 ADU (science), +- 8 (deep template), a PSF source."""
    shape = (4096, 4096)
    wcs = image_wcs(shape)
    yy, xx = np.mgrid[:63, :63]
    pool = []
    for _ in range(POOL):
        x, y = rng.uniform(40, 4050, 2)
        source = rng.uniform(200, 5000) * np.exp(-((xx - 31) ** 2 + (yy - 31) ** 2) / 8.0)
        template = rng.normal(1000.0, 8.0, (63, 63)).astype(np.float32)
        science = (rng.normal(1000.0, 30.0, (63, 63)) + source).astype(np.float32)
        _, x0, y0 = cut_stamp(np.zeros((1, 1), np.float32), x, y)  # only the origin
        pool.append((science, template, science - template, (x0, y0)))
    return pool, wcs


def detection(i: int, rng: np.random.Generator) -> Detection:
    probs = rng.dirichlet(np.ones(6)).astype(np.float32).astype(float)
    probs[-1] = max(0.0, 1.0 - float(sum(probs[:-1])))
    return Detection(
        candidate_id=i, mjd=61004.1 + i * 1e-6, ra=150.0 + rng.uniform(-1, 1), dec=2.0 + rng.uniform(-1, 1),
        ra_err=0.05, dec_err=0.05, x=float(rng.uniform(0, 4096)), y=float(rng.uniform(0, 4096)),
        exposure_id=f"f{i // 10000}-{(i // 100) % 100:03d}", field=f"f{i // 10000}", ccd=i % 189, band=Band.R,
        flux=float(rng.uniform(100, 1e5)), flux_err=20.0, snr=float(rng.uniform(5, 200)), mag=21.0, mag_err=0.05,
        real_bogus=float(rng.uniform()), class_probabilities=ClassProbabilities(*probs), alert_type=AlertType.TRANSIENT,
    )


def build_alerts(n: int, builder: AlertBuilder, pool: list, wcs: WCS, rng: np.random.Generator, offset: int = 0) -> Iterator[Alert]:
    prv = (detection(10**9, rng),)
    for i in range(offset, offset + n):
        sci, tmpl, diff, origin = pool[i % POOL]
        yield builder.build(detection(i, rng), object_id=i, science=sci, template=tmpl, difference=diff, wcs=wcs,
                            origin=origin, prv_detections=prv if i % 2 else ())


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=20_000, help="alerts per throughput row")
    parser.add_argument("--memory-alerts", type=int, default=120_000, help="alerts published for the memory figure")
    parser.add_argument("--maxlen", type=int, default=100_000, help="MAXLEN ~ of the memory stream")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    console = Console()
    console.print(f"load average at start (1, 5, 15 min): {os.getloadavg()}; CPUs: {os.cpu_count()}")
    rng = np.random.default_rng(1)
    pool, wcs = stamp_pool(rng)
    table = Table(title=f"alert stream, one process ({args.alerts:,} alerts a row)")
    for column in ("step", "alerts/s", "µs/alert", "notes"):
        table.add_column(column, justify="right" if column != "step" and column != "notes" else "left")

    # ---- cutouts: FITS + gzip, per mode
    n_build = min(args.alerts, 3000)
    built: dict[str, list[Alert]] = {}
    for mode in ("rle", "deflate", "stored"):
        builder = AlertBuilder(NIGHT, gzip_mode=mode)  # type: ignore[arg-type]
        start = time.perf_counter()
        built[mode] = list(build_alerts(n_build, builder, pool, wcs, rng))
        wall = time.perf_counter() - start
        table.add_row(f"cutouts (FITS+gzip {mode})", rate(n_build, wall), f"{wall / n_build * 1e6:.0f}", "3 stamps an alert, incl. Detection records")
    # the throughput rows reuse the rle packets, cycled with distinct alertIds
    base = built["rle"]

    def alerts(n: int, offset: int = 0) -> Iterator[Alert]:
        for i in range(offset, offset + n):
            a = base[i % len(base)]
            yield Alert(i + 1, NIGHT, a.object_id, a.detection, a.prv_detections, None,
                        a.cutout_science, a.cutout_template, a.cutout_difference)

    cfg = AlertsConfig(spool_dir=Path(tempfile.mkdtemp()) / "spool", maxlen=max(args.maxlen, 10_000))
    stream = stream_name(cfg.stream, NIGHT)
    start = time.perf_counter()
    encoded = [encode_alert(a, stream) for a in alerts(args.alerts)]
    wall = time.perf_counter() - start
    table.add_row("Avro encode (validated)", rate(args.alerts, wall), f"{wall / args.alerts * 1e6:.0f}", "cutouts inline")
    sizes = [e.nbytes for e in encoded]
    payloads = [len(dict(e.fields)["payload"]) for e in encoded]

    with RedisServer() as server:
        client = connect(RedisConfig(), url=server.url)
        with AlertProducer(client, NIGHT, config=cfg) as producer:
            report = producer.publish_encoded(encoded)
        table.add_row("publish pre-encoded, inline", rate(report.published, report.wall_seconds),
                      f"{report.wall_seconds / report.published * 1e6:.0f}", f"{report.nbytes / report.wall_seconds / 1e6:.0f} MB/s into Redis")
        start = time.perf_counter()
        with AlertProducer(client, NIGHT, config=cfg) as producer:
            rerun = producer.publish_encoded(encoded)
        table.add_row("rerun (all duplicates)", rate(args.alerts, rerun.wall_seconds),
                      f"{rerun.wall_seconds / args.alerts * 1e6:.0f}", f"{rerun.duplicates:,} skipped by the Lua dedup")
        consumed = []
        with AlertConsumer(client, "bench", stream=stream, config=cfg.model_copy(update={"read_count": 500})) as consumer:
            creport = consumer.run(lambda r: consumed.append(r.entry_id), max_alerts=args.alerts)
        table.add_row("consume (decode+validate, ack)", rate(creport.handled, creport.wall_seconds),
                      f"{creport.wall_seconds / creport.handled * 1e6:.0f}", "XREADGROUP 500, one XACK a read")
        client.flushall()

        side_cfg = cfg.model_copy(update={"cutouts": "side-store"})
        side_stream = stream_name(side_cfg.stream, "side")
        side = [encode_alert(a, side_stream, cutouts="side-store") for a in alerts(args.alerts)]
        with AlertProducer(client, "side", config=side_cfg) as producer:
            report = producer.publish_encoded(side)
        table.add_row("publish pre-encoded, side store", rate(report.published, report.wall_seconds),
                      f"{report.wall_seconds / report.published * 1e6:.0f}", "stream entry + cutout hash with TTL")
        side_payload = statistics.mean(len(dict(e.fields)["payload"]) for e in side)
        client.flushall()

        with AlertProducer(client, NIGHT, config=cfg) as producer:
            report = producer.publish(alerts(args.alerts))
        table.add_row("publish end to end (encode+publish)", rate(report.published, report.wall_seconds),
                      f"{report.wall_seconds / report.published * 1e6:.0f}", "from Alert records with cutouts built")
        client.flushall()
        console.print(table)

        sizes_table = Table(title="packet size (cutouts inline, rle gzip)")
        for column in ("", "bytes", "of Rubin's 82 KB"):
            sizes_table.add_column(column, justify="right")
        for label, value in (("payload mean", statistics.mean(payloads)), ("payload max", max(payloads)),
                             ("entry mean (all fields)", statistics.mean(sizes)),
                             ("payload mean, side store", side_payload)):
            sizes_table.add_row(label, f"{value:,.0f}", f"{value / RUBIN_BOUND_BYTES:.0%}")
        for mode in ("deflate", "stored"):
            mean = statistics.mean(len(encode_alert(a, stream).fields[3][1]) for a in built[mode][:500])
            sizes_table.add_row(f"payload mean, {mode} gzip", f"{mean:,.0f}", f"{mean / RUBIN_BOUND_BYTES:.0%}")
        console.print(sizes_table)

        if not args.skip_memory:
            mem_cfg = cfg.model_copy(update={"maxlen": args.maxlen, "batch_size": 500})
            before = client.info("memory")["used_memory"]
            with AlertProducer(client, NIGHT, config=mem_cfg) as producer:
                report = producer.publish(alerts(args.memory_alerts, offset=10**7))
            info = client.info("memory")
            xlen = client.xlen(stream)
            dedup = client.memory_usage(dedup_key(stream), samples=0) or 0
            used = info["used_memory"] - before
            per_100k = (used - dedup) / xlen * 100_000
            mem = Table(title=f"Redis memory: {args.memory_alerts:,} alerts published, MAXLEN ~ {args.maxlen:,}")
            for column in ("", "value"):
                mem.add_column(column, justify="right")
            mem.add_row("entries kept (XLEN)", f"{xlen:,}")
            mem.add_row("used_memory after - before", f"{used / 1e9:.2f} GB")
            mem.add_row("  of which the dedup hash", f"{dedup / 1e6:.1f} MB ({dedup / args.memory_alerts:.0f} B per published alertId)")
            mem.add_row("stream per 100k entries", f"{per_100k / 1e9:.2f} GB ({per_100k / 100_000 / 1e3:.1f} KB an entry)")
            mem.add_row("used_memory_rss", f"{info['used_memory_rss'] / 1e9:.2f} GB")
            mem.add_row("publish rate of this run", f"{report.published / report.wall_seconds:,.0f} alerts/s")
            console.print(mem)
        client.close()
    console.print(f"load average at end (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
