"""
Faults as an operator meets them, each with its own store and redis-server: the final stream is
the clean run's, alert id for alert id and byte for byte, and the exit code says what happened
(0: everything final is in Redis; 3: something is held back, spooled or unconfirmed).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import redis
from typer.testing import CliRunner

from skyblink.cli import app
from skyblink.cluster.night import run_night
from skyblink.storage.redis_server import RedisServer

from .conftest import NIGHT, CleanNight, fault_config, fault_env, stream_entries

pytestmark = [pytest.mark.cluster, pytest.mark.redis]


def _night_run(clean: CleanNight, root: Path, server: RedisServer, *extra: str) -> tuple[int, str, dict]:
    """`skyblink night run` in this process (the session's Ray); its exit code, output and report."""
    report = root / f"report-{len(list(root.glob('report-*.json')))}.json"
    result = CliRunner().invoke(app, ["night", "run", str(clean.night_dir), "--night", NIGHT, "--report", str(report),
                                      *extra], env=fault_env(root, server.url))
    output = result.output
    data = json.loads(report.read_text()) if report.exists() else {}
    return result.exit_code, output, data


def _assert_clean_stream(clean: CleanNight, server: RedisServer) -> None:
    entries = stream_entries(server.url, clean.stream)
    assert sorted(entries) == sorted(clean.entries), "the stream's alert ids differ from the clean run's"
    differ = [alert_id for alert_id, fields in entries.items() if fields != clean.entries[alert_id]]
    assert not differ, f"{len(differ)} packet(s) differ from the clean run's"


def test_redis_down_at_publish_spools_exits_3_and_the_next_run_delivers_them(
    clean_night: CleanNight, tmp_path: Path, redis_server: RedisServer
) -> None:
    clean_night.copy_store(tmp_path)
    n = len(clean_night.entries)

    # The server dies as publishing starts: every alert goes to the spool; the run must not say 0.
    def kill_at_publish(stage: str) -> None:
        if stage == "publish":
            redis_server.kill()

    report = run_night(clean_night.night_dir, fault_config(tmp_path, redis_server.url), night=NIGHT,
                       on_stage=kill_at_publish)
    assert report.alerts_spooled == n and report.alerts_in_stream == 0 and not report.ok

    redis_server.start()  # the operator brings Redis back and runs the same command
    code, output, data = _night_run(clean_night, tmp_path, redis_server)
    assert code == 0, output
    assert data["alerts_replayed"] == n and data["alerts_in_stream"] == n and data["alerts_published"] == n
    _assert_clean_stream(clean_night, redis_server)


def test_redis_lost_at_publish_makes_the_cli_exit_3_with_the_count(
    clean_night: CleanNight, tmp_path: Path, redis_server: RedisServer
) -> None:
    """What a scheduler sees: not 0, and how many alerts are not in Redis."""
    store = clean_night.copy_store(tmp_path)
    shutil.rmtree(store / "catalogs")
    catalog = store / "catalogs" / "objects.parquet"  # written by reduce, just before publishing

    def kill_when_reduced() -> None:
        deadline = time.monotonic() + 120
        while not catalog.exists() and time.monotonic() < deadline:
            time.sleep(0.002)
        redis_server.kill()

    killer = threading.Thread(target=kill_when_reduced, daemon=True)
    killer.start()
    code, output, report = _night_run(clean_night, tmp_path, redis_server)
    killer.join()
    n = len(clean_night.entries)
    assert code == 3, output
    absent = report["alerts_spooled"] + report["alerts_unconfirmed"]
    assert absent == n and report["alerts_in_stream"] == 0, report
    flat = " ".join(output.split())
    assert f"{report['alerts_spooled']} alert(s) spooled and {report['alerts_unconfirmed']} unconfirmed" in flat


@pytest.mark.parametrize("persistent", [False, True], ids=["persistence-off", "persistence-on"])
def test_redis_restarted_during_publish_ends_with_every_alert_in_the_stream(
    clean_night: CleanNight, tmp_path: Path, persistent: bool
) -> None:
    clean_night.copy_store(tmp_path)
    server = RedisServer(data_dir=tmp_path / "redis-data", persistent=persistent)
    server.start()
    restarted = threading.Event()

    def restart() -> None:
        server.kill()
        server.start()
        restarted.set()

    def watch_stream() -> None:  # restart the server once a few entries are in
        client = redis.Redis.from_url(server.url)
        try:
            while not restarted.is_set():
                try:
                    if client.xlen(clean_night.stream) >= 5:
                        restart()
                        return
                except redis.exceptions.ConnectionError:
                    return
        finally:
            client.close()

    watcher = threading.Thread(target=watch_stream, daemon=True)

    def on_stage(stage: str) -> None:
        if stage == "publish":
            watcher.start()
        elif stage == "confirm":  # published before the watcher saw it: restart now, before confirming
            watcher.join(timeout=5)
            if not restarted.is_set():
                restart()

    try:
        config = fault_config(tmp_path, server.url, **{"alerts.retries": 5, "alerts.backoff_s": 0.1})
        report = run_night(clean_night.night_dir, config, night=NIGHT, on_stage=on_stage)
        assert restarted.is_set()
        assert report.ok and report.alerts_in_stream == len(clean_night.entries), report.to_json()
        if not persistent:
            assert report.alerts_resent > 0, "the restart lost entries, yet none was sent again"
        _assert_clean_stream(clean_night, server)
    finally:
        restarted.set()
        server.stop()


@pytest.mark.slow
def test_killed_actor_loses_no_tile_and_the_stream_is_the_clean_one(
    clean_night: CleanNight, tmp_path: Path, redis_server: RedisServer
) -> None:
    store = clean_night.copy_store(tmp_path)
    exposure = sorted((store / "results" / "units").iterdir())[1]
    for path in exposure.rglob("*.parquet"):  # this exposure's tiles are processed again
        path.unlink()
    killed: list[str] = []

    def kill_one_worker(_outcome: object) -> None:
        if not killed:
            name = sorted(n for n in ray.util.list_named_actors() if n.startswith("skyblink-worker-"))[0]
            ray.kill(ray.get_actor(name), no_restart=False)  # as a crash: Ray restarts it
            killed.append(name)

    config = fault_config(tmp_path, redis_server.url, **{"night.units_per_call": 1})
    report = run_night(clean_night.night_dir, config, night=NIGHT, on_unit=kill_one_worker)
    assert killed and report.ok and report.tiles_processed == 4, report.to_json()
    _assert_clean_stream(clean_night, redis_server)


@pytest.mark.slow  # two runs that start a worker actor
def test_corrupt_shard_holds_the_field_back_then_the_repaired_rerun_publishes_the_clean_stream(
    clean_night: CleanNight, tmp_path: Path, redis_server: RedisServer
) -> None:
    store = clean_night.copy_store(tmp_path)
    exposure = sorted(p.name for p in (store / "exposures").iterdir() if p.is_dir())[1]
    for path in (store / "results" / "units" / exposure).rglob("*.parquet"):  # its tiles are read again
        path.unlink()
    shard = store / "exposures" / exposure / "ccd000" / "image" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[1000:5096] = np.random.default_rng(19).bytes(4096)  # 4 KB of random bytes, as in the issue
    shard.write_bytes(bytes(data))

    code, output, report = _night_run(clean_night, tmp_path, redis_server)
    assert code == 3, output
    flat = " ".join(output.split())
    assert f"chunk checksum mismatch (crc32c) in exposures/{exposure}/ccd000/image" in flat
    assert report["tiles_failed"] and all(key.startswith(f"exposures/{exposure}/") for key in report["tiles_failed"])
    total = len(clean_night.entries)
    assert sum(report["alerts_held_back"].values()) == sum(report["alerts"].values()) > 0 and "held back" in flat
    assert stream_entries(redis_server.url, clean_night.stream) == {}, "alerts of an incomplete field went out"

    # The repair is the same command: the damaged exposure is ingested again from its file.
    code, output, report = _night_run(clean_night, tmp_path, redis_server)
    assert code == 0, output
    assert report["tiles_processed"] == 4 and not report["tiles_failed"] and not report["alerts_held_back"]
    assert report["alerts_in_stream"] == report["alerts_published"] == total
    _assert_clean_stream(clean_night, redis_server)


def _cli(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "skyblink.cli", *args], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: killing it kills its Ray too
    )


@pytest.mark.slow  # two CLI processes beside a run
def test_a_second_writer_is_refused_naming_the_first_or_waits_for_it(
    clean_night: CleanNight, tmp_path: Path, redis_server: RedisServer
) -> None:
    clean_night.copy_store(tmp_path)
    env = fault_env(tmp_path, redis_server.url)
    outcomes: dict[str, object] = {}

    def start_others(stage: str) -> None:  # while this run holds the store
        if stage != "publish":
            return
        refused = _cli("night", "run", str(clean_night.night_dir), env=env)
        waiting = _cli("ingest", str(clean_night.night_dir), "--wait", env=env)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in waiting.stdout), daemon=True)
        reader.start()
        outcomes["refused"] = (refused.wait(timeout=120), refused.communicate()[0].decode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("waiting for" in line for line in lines):
            time.sleep(0.1)
        outcomes["waited"] = waiting.poll() is None and any("waiting for" in line for line in lines)
        outcomes["waiting"], outcomes["reader"], outcomes["lines"] = waiting, reader, lines

    report = run_night(clean_night.night_dir, fault_config(tmp_path, redis_server.url), night=NIGHT,
                       on_stage=start_others)
    assert report.ok
    code, output = outcomes["refused"]  # type: ignore[misc]
    flat = " ".join(output.split())
    assert code == 75, output
    assert f"is being written by 'skyblink night run' (pid {os.getpid()} on {socket.gethostname()}" in flat
    assert outcomes["waited"], f"ingest --wait did not wait for the running night: {outcomes['lines']}"
    waiting: subprocess.Popen[bytes] = outcomes["waiting"]  # type: ignore[assignment]
    assert waiting.wait(timeout=120) == 0, "".join(outcomes["lines"])  # type: ignore[arg-type]
    _assert_clean_stream(clean_night, redis_server)


@pytest.mark.slow
def test_killed_driver_leaves_a_stale_lock_and_the_rerun_ends_with_the_clean_stream(
    clean_night: CleanNight, tmp_path: Path, redis_server: RedisServer
) -> None:
    store = clean_night.copy_store(tmp_path)
    for exposure in sorted((store / "results" / "units").iterdir())[1:]:
        shutil.rmtree(exposure)  # two exposures to process: the driver is killed midway
    first = _cli("night", "run", str(clean_night.night_dir), "--night", NIGHT,
                 env={**fault_env(tmp_path, redis_server.url), "SKYBLINK_RAY__NUM_CPUS": "2"})
    units = store / "results" / "units"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None and len(list(units.rglob("*.parquet"))) < 5:
        time.sleep(0.1)
    assert first.poll() is None, f"the run ended before it could be killed: {first.communicate()[0].decode()[-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert (store / "writer.lock").exists()  # the killed driver could not release it

    code, output, report = _night_run(clean_night, tmp_path, redis_server)
    assert code == 0, output
    assert report["tiles_done_before"] + report["tiles_processed"] == 12
    _assert_clean_stream(clean_night, redis_server)
