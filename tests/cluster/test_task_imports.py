"""
What a Ray task process imports: the night run's tasks (ingest, reference catalogs, per-exposure reduce) run in fresh
worker processes, which pay for every import of the task's module. On a GPU node torch is
installed, and importing it costs seconds in each such process (issue 22), so the tasks' modules
must not import it even where it is there.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = r"""
import importlib, json, sys
module, name = sys.argv[1], sys.argv[2]
task = getattr(importlib.import_module(module), name)
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "onnxruntime", "tensorrt", "cupy"))
print(json.dumps({"task": task.__module__, "heavy": heavy}))
"""


@pytest.mark.parametrize(("module", "name"), [("skyblink.cluster.ingest", "ingest_file"),
                                              ("skyblink.reduce.association", "reference_ccd_task"),
                                              ("skyblink.cluster.results", "exposure_static_detections")])
def test_a_night_run_task_imports_no_ml_package(module: str, name: str) -> None:
    pytest.importorskip("torch", reason="the point is a process where torch is installed")
    result = subprocess.run([sys.executable, "-c", _PROBE, module, name], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["task"] == module  # what Ray pickles by reference: the worker imports this module
    assert not found["heavy"], f"{module}.{name} pulls in {found['heavy']}"
