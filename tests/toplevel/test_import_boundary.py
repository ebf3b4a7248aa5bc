"""
The driver side (CLI, configuration, cluster driver, reduce, storage, alerts, sim) imports with no
torch, onnxruntime, tensorrt or CUDA packages: the head node and the submitter install no extras.

Each module is imported in a subprocess whose import system refuses the ML packages (a meta-path
finder that raises ImportError for them), so a module that pulls one in, directly or through
another skyblink module, fails here with the chain that led to it.
"""

from __future__ import annotations

import importlib.util
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import skyblink
import skyblink.cluster
import skyblink.evaluation
import skyblink.reduce
import skyblink.sim
import skyblink.storage

ROOT = Path(__file__).resolve().parents[2]

#: Top-level names of the packages the driver side must not need.
BLOCKED = ("torch", "onnxruntime", "onnx", "onnxscript", "tensorrt", "tensorrt_rtx", "cuda", "cupy", "pycuda",
           "nvidia", "triton")

#: ML-side modules inside the driver's packages: the engine commands (train, export, build) and the braai
#: port (a torch network, for scoring ZTF alerts) run
#: where the ML extras are installed.
ML_SIDE = {"skyblink._cli_engines", "skyblink.evaluation.braai_port"}

#: Modules of other packages that the driver needs: the shared constants, the registry and
#: channels the CLI reads, and the actor class the driver hands to Ray.
EXTRA_DRIVER_MODULES = (
    "skyblink.engines",
    "skyblink.engines.manifest",
    "skyblink.engines.registry",
    "skyblink.engines.channels",
    "skyblink.engines.catalog",
    "skyblink.workers.actor",
    "skyblink.workers.tile_unit",
)

_PROBE = r"""
import importlib, importlib.abc, json, sys, traceback

BLOCKED = set(json.loads(sys.argv[1]))

class RefuseMlPackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in BLOCKED or top.startswith("tensorrt"):
            raise ImportError(f"{name} is not installed on the driver side (blocked by the test)")
        return None

sys.meta_path.insert(0, RefuseMlPackages())
failures = {}
for module in json.loads(sys.argv[2]):
    try:
        importlib.import_module(module)
    except ImportError as exc:
        chain = ["/".join(f.filename.split("/")[-2:]) + f":{f.lineno}"
                 for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith(".py") and "importlib" not in f.filename]
        failures[module] = f"{exc} (via {' -> '.join(chain)})"
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
print(json.dumps({"failures": failures, "leaked": leaked}))
"""


def driver_modules() -> list[str]:
    """Every module of the driver's packages (walked, so new modules are covered) and the extras."""
    names = ["skyblink.cli", "skyblink.config", "skyblink.threads"]
    for package in (skyblink, skyblink.cluster, skyblink.reduce, skyblink.evaluation, skyblink.storage, skyblink.sim):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted({*names, *EXTRA_DRIVER_MODULES} - ML_SIDE)


def test_driver_side_imports_without_ml_packages() -> None:
    modules = driver_modules()
    assert {"skyblink.cluster.night", "skyblink.reduce.steps", "skyblink.storage.alerts.producer",
            "skyblink.sim.night", "skyblink._cli_night"} <= set(modules)
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(BLOCKED), json.dumps(modules)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert not found["failures"], "\n".join(f"{m}: {why}" for m, why in found["failures"].items())
    assert not found["leaked"], found["leaked"]


def test_the_probe_catches_a_module_that_imports_torch() -> None:
    """The blocker is live: the torch side of the engines fails under it, naming torch."""
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(BLOCKED), json.dumps(["skyblink.engines.networks"])],
                            capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert "torch" in found["failures"]["skyblink.engines.networks"]


def test_the_cli_runs_without_ml_packages() -> None:
    """`skyblink --help` and `skyblink night run --help` run with the ML packages refused."""
    runner = _PROBE.replace('print(json.dumps({"failures": failures, "leaked": leaked}))', "")
    for args in (["--help"], ["night", "run", "--help"], ["alerts", "consume", "--help"]):
        code = runner + f"\nsys.argv = ['skyblink', *{args!r}]\nfrom skyblink.cli import main\nmain()\n"
        result = subprocess.run([sys.executable, "-c", code, json.dumps(BLOCKED), "[]"],
                                capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert "Usage" in result.stdout


def test_driver_side_leaves_installed_ml_packages_unimported() -> None:
    """Where the ML extras are installed, importing the driver side still loads none of them (an
    optional import at the top of a module, ``try: import torch``, passes the blocked probe above
    but costs the driver torch's import wherever torch is there)."""
    installed = [name for name in BLOCKED if importlib.util.find_spec(name) is not None]
    if not installed:
        pytest.skip("no ML package installed here: nothing could be loaded")
    code = ("import importlib, json, sys\n"
            "for module in json.loads(sys.argv[1]):\n"
            "    importlib.import_module(module)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.partition('.')[0] in json.loads(sys.argv[2]))))\n")
    result = subprocess.run([sys.executable, "-c", code, json.dumps(driver_modules()), json.dumps(BLOCKED)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the driver side loads {loaded[:10]}"


def test_a_worker_actor_starts_without_the_alerts_redis_or_the_reduce() -> None:
    """What Ray imports to start a worker actor (its class, `start_runner` and the result sink) leaves
    out the alert packets, Redis, Avro and the reduce: the actor's imports are on the GPU demo night's
    critical path (issue 22; 2.7 s of them on an H100 node), and it uses none of these."""
    code = ("import json, sys\n"
            "import skyblink.workers.actor, skyblink.cluster.results, skyblink.engines.backends\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.partition('.')[0] in ('redis', 'fastavro')\n"
            "                        or m.startswith(('skyblink.storage.alerts', 'skyblink.reduce')))))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"a worker actor's start imports {loaded[:10]}"
