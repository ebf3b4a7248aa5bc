#!/usr/bin/env bash
# The main job: simulate a night and run the nightly pipeline on it with the embedded defaults
# (local Ray, a private redis-server, ONNX Runtime on the CPU or torch/TensorRT on a GPU): ingest,
# tiles on worker actors, reduce, alerts on the night's Redis stream, catalogs. Writes into
# ./skyblink-demo/ and leaves the private redis-server running, so its alerts can be read after.
#
# Its environment is .venv-demo with only what the run needs: the base install plus ONNX Runtime
# (`.[cpu]`) where there is no NVIDIA GPU, the GPU extras (`.[gpu]`) where there is one.
# Settings (not SKYBLINK_*: that prefix is the configuration's):
#   DEMO_DIR   where the night and the store go (default skyblink-demo)
#   DEMO_VENV  the environment to use (default .venv-demo)
#   DEMO_SIM   extra flags for `skyblink sim night`, e.g. "--size 512 --exposures 3"
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${DEMO_VENV:-.venv-demo}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras=gpu
  echo "[demo] an NVIDIA GPU is visible: the run uses the GPU extras (torch with CUDA)"
else
  extras=cpu
  echo "[demo] no NVIDIA GPU (nvidia-smi absent or failing): the run uses ONNX Runtime on the CPU"
fi
bash scripts/setup.sh "$venv" "$extras"
out=${DEMO_DIR:-skyblink-demo}
echo "[demo] simulating a night into $out/night"
# shellcheck disable=SC2086 - DEMO_SIM is a list of flags
"$venv/bin/skyblink" sim night "$out/night" ${DEMO_SIM:-}
echo "[demo] running the nightly pipeline on it (store $out/store.zarr)"
"$venv/bin/skyblink" night run "$out/night" --store "$out/store.zarr" --keep-redis
