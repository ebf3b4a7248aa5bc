"""
The KubeRay split, run for real: a head and a submitter with the base install only (no torch,
onnxruntime, tensorrt or CUDA packages), workers with the ML extras.

A fresh virtualenv gets the wheel built from this checkout and the base dependencies only: the
distributions that ``skyblink``'s base requirements reach, taken from this environment (no network
needed) through a folder of links on a ``.pth`` path, so that nothing else (no torch) is
importable there. A Ray head started from the full environment plays the worker pods; from the
base environment ``skyblink sim night``, ``skyblink ingest``, ``skyblink night run --ray-address``
and ``skyblink alerts consume`` take a small night to its alerts and read them back. With ray[default]
the head runs its dashboard: its state API lists the night's named worker actors and the metrics
agent serves the run's tiles, candidates, stage seconds and alerts published.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from skyblink.storage.redis_server import RedisServer, _free_port, find_redis_server

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]
ML_PACKAGES = ("torch", "onnxruntime", "onnx", "tensorrt", "tensorrt_rtx", "cuda")


def base_distributions(name: str = "skyblink") -> set[str]:
    """The distributions ``name``'s base requirements (no extras) reach, as installed here."""
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset[str]())]
    while todo:
        item = todo.pop()
        if item in done:
            continue
        done.add(item)
        dist_name, extras = item
        for text in metadata.distribution(dist_name).requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((req.name.lower().replace("_", "-"), frozenset(req.extras)))
    return {n for n, _ in done}


def link_distributions(names: set[str], target: Path) -> None:
    """Link each distribution's top-level files (package folders, modules, dist-info) into ``target``."""
    target.mkdir(parents=True)
    for name in sorted(names - {"skyblink"}):
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source, link = base / top, target / top
            if source.exists() and not link.exists() and not top.endswith(".pth"):
                link.symlink_to(source)


@pytest.fixture(scope="module")
def base_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the skyblink wheel and only its base dependencies; returns its bin/."""
    root = tmp_path_factory.mktemp("base-env")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(root / "dist"), str(ROOT)], check=True, cwd=root)
    (wheel,) = (root / "dist").glob("skyblink-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # this environment's pip installs into it (--python)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    names = base_distributions()
    assert not {n for n in names if n.startswith(("torch", "onnx", "tensorrt", "cuda", "nvidia"))}, names
    link_distributions(names, root / "base-deps")
    (purelib / "base-deps.pth").write_text(f"{root / 'base-deps'}\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True)
    probe = ("import importlib.util, json; "
             f"print(json.dumps([m for m in {ML_PACKAGES!r} if importlib.util.find_spec(m) is not None]))")
    present = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout)
    assert present == [], f"the base environment can import {present}"
    return env_dir / "bin"


#: The dashboard and the metrics agent come with ray[default] (the dev extra; the images have it).
DASHBOARD = importlib.util.find_spec("aiohttp") is not None and importlib.util.find_spec("prometheus_client") is not None


@dataclass(frozen=True)
class Head:
    """A running `ray start --head`: its process, GCS address, log, dashboard and metrics ports."""

    process: subprocess.Popen
    address: str
    log: Path
    dashboard_port: int
    metrics_port: int


#: Ray's token authentication (on by default for `ray start`) with this test's own token, so that
#: neither side reads or writes the user's ~/.ray/auth_token.
RAY_AUTH_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    """A Ray head from the full environment (the ML side) on free ports; stopped with its processes."""
    temp_dir = Path(tempfile.mkdtemp(prefix="sbray"))  # short: Ray's socket paths must stay < 108 bytes
    port = _free_port()
    ray_bin = Path(sys.executable).with_name("ray")
    ports = {f"--{name}": str(_free_port()) for name in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port", "dashboard-port")}
    dashboard = [f"--include-dashboard={str(DASHBOARD).lower()}", "--dashboard-host=127.0.0.1"]
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0", *dashboard,
         f"--temp-dir={temp_dir}", "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]],
        stdout=(temp_dir / "ray-start.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **RAY_AUTH_ENV, "OMP_NUM_THREADS": "1"})
    try:
        # Waited for by the test (`_wait_for_ray`), so that Ray starts while the base venv is built.
        yield Head(head, f"127.0.0.1:{port}", temp_dir / "ray-start.log", int(ports["--dashboard-port"]),
                   int(ports["--metrics-export-port"]))
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # --block: ray start stops the node's processes on SIGTERM
        try:
            head.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        _kill_leftovers(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_ray(head: subprocess.Popen, address: str, log: Path) -> str:
    probe = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(ray.cluster_resources()['CPU'])"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray start --head exited with {head.returncode}: {log.read_text()[-3000:]}")
        if subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False, timeout=60,
                          env={**os.environ, **RAY_AUTH_ENV}).returncode == 0:
            return address
        time.sleep(2)
    pytest.fail(f"no Ray head at {address} after 90 s: {log.read_text()[-3000:]}")


def _kill_leftovers(temp_dir: Path) -> None:
    """Kill any process of this head (its command line names its temp dir) that outlived ray start."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir) in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def night_on_cluster(ray_head: Head, base_env: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """From the base environment: sim night, ingest and night run on the head; the redis-server stays up."""
    if find_redis_server() is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    root = tmp_path_factory.mktemp("night-on-cluster")
    (root / "skyblink.toml").write_text(
        f'store = "{root / "store.zarr"}"\n'
        f'[ingest]\ntile_size = 256\n'
        f'[night]\nunits_per_call = 2\nredis_dir = "{root / "redis"}"\n'
        f'[alerts]\nspool_dir = "{root / "spool"}"\n'
        f'[engines]\nregistry = "{root / "engines"}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYBLINK_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(RAY_AUTH_ENV, PATH=f"{base_env}:{env.get('PATH', '')}", OMP_NUM_THREADS="1")

    def run(*args: str) -> str:
        result = subprocess.run([str(base_env / "skyblink"), *args], cwd=root, env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        assert result.returncode == 0, f"skyblink {' '.join(args)}: {result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        return result.stdout

    with RedisServer(data_dir=root / "redis-test") as server:
        run("sim", "night", str(root / "night"), "--fields", "1", "--exposures", "2", "--size", "512", "--seed", "11")
        address = _wait_for_ray(ray_head.process, ray_head.address, ray_head.log)
        run("ingest", str(root / "night"), "--ray-address", address)
        out = run("night", "run", str(root / "night"), "--ray-address", address, "--redis-url", server.url,
                  "--report", str(root / "report.json"))
        yield {"root": root, "run": run, "url": server.url, "out": out,
               "report": json.loads((root / "report.json").read_text())}


def test_base_install_runs_a_night_on_a_cluster_with_ml_workers(night_on_cluster: dict) -> None:
    report, run, out = night_on_cluster["report"], night_on_cluster["run"], night_on_cluster["out"]
    assert report["tiles"] == report["tiles_done_before"] + report["tiles_processed"] > 0, out
    assert not report["tiles_failed"], report["tiles_failed"]
    published = report["alerts_published"]
    assert published == sum(report["alerts"].values()) > 0, out
    # The registry's answer reached every actor and the report names it, per actor and model.
    engines = report["workers"]["engines"]
    assert engines and all(set(e) == {"detector", "classifier"} for e in engines.values())
    assert all("no engine registry configured" not in c["reason"] for e in engines.values() for c in e.values())
    # Where each actor's start went: the parts are there and add up to no more than the whole.
    startup = report["workers"]["startup"]
    assert set(startup) == set(engines)
    for parts in startup.values():
        assert {"process", "detector", "classifier", "total"} <= set(parts), parts
        assert parts["total"] > 0 and parts["process"] + parts["detector"] + parts["classifier"] <= parts["total"] + 0.05, parts
    consumed = run("alerts", "consume", "--redis-url", night_on_cluster["url"], "--stream", report["stream"],
                   "--group", "test", "--out", "-", "--idle-exit", "2")
    lines = [json.loads(line) for line in consumed.splitlines() if line.startswith("{")]
    assert len(lines) == published
    assert {line["alertId"] for line in lines} == set(_catalog_alert_ids(night_on_cluster["root"] / "store.zarr"))


@pytest.mark.skipif(not DASHBOARD, reason="the dashboard and metrics agent need ray[default] (the dev extra)")
def test_dashboard_lists_the_actors_and_the_metrics_agent_serves_the_runs_values(night_on_cluster: dict,
                                                                                 ray_head: Head) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    report = night_on_cluster["report"]
    # The dashboard's state API: the night's named worker actors (dead now: the run is over).
    headers = {"Authorization": f"Bearer {RAY_AUTH_ENV['RAY_AUTH_TOKEN']}"}
    url = f"http://127.0.0.1:{ray_head.dashboard_port}/api/v0/actors?limit=1000&detail=1"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        actors = json.loads(response.read())["data"]["result"]["result"]
    names = {a.get("name") for a in actors if (a.get("name") or "").startswith("skyblink-worker-")}
    assert names == set(report["workers"]["engines"]), (names, [a.get("name") for a in actors])
    # The metrics agent's Prometheus endpoint: the run's values, the driver's included.
    wanted = {"ray_skyblink_tiles": report["tiles_processed"], "ray_skyblink_candidates": report["candidates"],
              "ray_skyblink_alerts_published": report["alerts_published"]}
    deadline = time.monotonic() + 30
    while True:
        text = urllib.request.urlopen(f"http://127.0.0.1:{ray_head.metrics_port}/metrics", timeout=30).read().decode()
        totals: dict[str, float] = {}
        stages: set[str] = set()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_total") and family.name in wanted:
                    totals[family.name] = totals.get(family.name, 0.0) + sample.value
                if sample.name == "ray_skyblink_stage_seconds_count" and sample.value > 0:
                    stages.add(sample.labels["stage"])
        seen = {name: totals.get(name) for name in wanted}
        if seen == {k: float(v) for k, v in wanted.items()} and {"dispatch", "publish"} <= stages:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"metrics served {seen}, stages {sorted(stages)}; the run had {wanted}")
        time.sleep(2)


def _catalog_alert_ids(store: Path) -> list[int]:
    import pyarrow.parquet as pq

    table = pq.read_table(store / "catalogs" / "detections.parquet", columns=["alert_id", "alert_type"])
    return [a for a, t in zip(table.column("alert_id").to_pylist(), table.column("alert_type").to_pylist(), strict=True)
            if t is not None]
