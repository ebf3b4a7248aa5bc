"""
The fixed costs at a night run's start, one by one, as the run pays them: Ray's local start, a bare
actor's process, a worker actor's imports, torch, the CUDA context, the detector on the device and
its first batch, then Ray's shutdown. Each actor is a fresh Ray actor asking for the night's
resources (one GPU where there is one), timed from its creation (the driver's clock) and inside it.

    python benchmarks/startup_costs.py [--rounds 2]

The GPU demo night spends most of its time here (issue 22: startup, ``workers_start`` and the
shutdown are 13 of 18 s on an H100); this splits them so that the one to cut is measured, not
guessed. Prints a table; writes JSON to ``$OUT/startup_costs.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import ray

from skyblink.cluster.ray_runtime import ray_session
from skyblink.config import RayConfig


@ray.remote
class _Bare:
    def __init__(self) -> None:
        self.began = time.time()

    def began_at(self) -> float:
        return self.began


@ray.remote
class _Worker:
    """What a GPU worker actor does at its start, each step timed inside the actor."""

    def __init__(self) -> None:
        self.began = time.time()

    def start(self, size: int) -> dict[str, float]:
        steps: dict[str, float] = {}
        t = time.perf_counter()

        def step(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            steps[name] = now - t
            t = now

        import skyblink.cluster.results
        import skyblink.engines.backends
        import skyblink.workers.actor  # noqa: F401
        step("skyblink worker imports")
        import torch

        step("import torch")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            torch.cuda.init()
            torch.zeros(1, device=device)
            torch.cuda.synchronize()
        step(f"CUDA context ({device})")
        from skyblink.engines.catalog import load_network

        network = load_network("detector").to(device)
        step("detector loaded onto the device")
        dtype = torch.float16 if device == "cuda" else torch.float32
        network = network.to(dtype)
        with torch.inference_mode():
            network(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
            if device == "cuda":
                torch.cuda.synchronize()
        step(f"first {size}^2 batch (cuDNN's first call)")
        with torch.inference_mode():
            network(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
            if device == "cuda":
                torch.cuda.synchronize()
        step(f"second {size}^2 batch")
        return steps

    def began_at(self) -> float:
        return self.began


def one_round(size: int) -> dict[str, float]:
    """One start of Ray, a bare actor, a worker-like actor and Ray's shutdown; seconds per step."""
    row: dict[str, float] = {}
    t0 = time.perf_counter()
    with ray_session(RayConfig()):
        row["ray start (local, as the night)"] = time.perf_counter() - t0
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        created = time.time()
        bare = _Bare.options(num_gpus=gpus, num_cpus=1).remote()
        row["bare actor: creation -> constructor"] = ray.get(bare.began_at.remote()) - created
        ray.kill(bare)
        created = time.time()
        worker = _Worker.options(num_gpus=gpus, num_cpus=1).remote()
        began = ray.get(worker.began_at.remote())
        row["worker actor: creation -> constructor"] = began - created
        for name, seconds in ray.get(worker.start.remote(size)).items():
            row[f"  {name}"] = seconds
        row["worker actor: creation -> ready"] = time.time() - created
        ray.kill(worker)
        t0 = time.perf_counter()
    row["ray shutdown"] = time.perf_counter() - t0
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="Ray started and stopped this many times")
    parser.add_argument("--size", type=int, default=1088, help="the detector's input side (a tile and its margins)")
    args = parser.parse_args()
    rounds = [one_round(args.size) for _ in range(args.rounds)]
    print(f"\nstart-up costs, {args.rounds} rounds (each: Ray started, two actors, Ray stopped); {os.cpu_count()} CPUs")
    print(f"{'step':<52}" + "".join(f" {'round ' + str(i + 1):>9}" for i in range(len(rounds))) + f" {'median':>9}")
    for name in rounds[0]:
        values = [r.get(name, float('nan')) for r in rounds]
        print(f"{name:<52}" + "".join(f" {v:>9.2f}" for v in values) + f" {statistics.median(values):>9.2f}")
    if os.environ.get("OUT"):
        result: dict[str, Any] = {"cpus": os.cpu_count(), "rounds": rounds}
        Path(os.environ["OUT"], "startup_costs.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
