#!/usr/bin/env bash
# The main job: simulate a night and run the nightly pipeline on it with the embedded defaults
# (local Ray, a private redis-server, ONNX Runtime on the CPU): ingest, tiles on worker actors,
# reduce, alerts on the night's Redis stream, catalogs. Writes into ./skyblink-demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${DEMO_DIR:-skyblink-demo}  # not SKYBLINK_*: that prefix is the configuration's
.venv/bin/skyblink sim night "$out/night"
.venv/bin/skyblink night run "$out/night" --store "$out/store.zarr"
