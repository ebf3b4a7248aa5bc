#!/usr/bin/env bash
# Create (or refresh) a virtual environment with skyblink and the extras asked for, saying what it does.
#   bash scripts/setup.sh [VENV [EXTRAS]]      default: .venv dev (the tests' environment)
# scripts/test.sh uses .venv with the dev extras (torch, ONNX, TensorRT-RTX, pytest, ...);
# scripts/demo-night.sh uses .venv-demo with the cpu extra (ONNX Runtime only) or, on a machine
# with an NVIDIA GPU, the gpu extra. Two environments, so that neither reinstalls the other's
# packages when both are used. Safe to run again: it reinstalls only when pyproject.toml or the
# extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
extras=${2:-dev}
PYTHON=${PYTHON:-python3}
say() { echo "[setup] $*"; }
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "skyblink needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=python3.11 (or newer)." >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment $venv ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$venv"
fi
# The pipeline and the tests start their own redis-server when no Redis URL is configured.
if command -v redis-server >/dev/null 2>&1; then
  :
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing redis-server (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
else
  echo "warning: redis-server is not installed; install it (e.g. 'sudo apt-get install redis-server')." >&2
  echo "         Without it the Redis tests are skipped and 'night run' needs --redis-url." >&2
fi
# Reinstall only when pyproject.toml or the extras changed since the last install.
stamp="$venv/.skyblink-installed"
want="skyblink[$extras] $(cksum < pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  start=$(date +%s)
  log="$venv/pip-install.log"  # pip's own output; shown only when it fails
  pip() {
    if ! "$venv/bin/python" -m pip "$@" --disable-pip-version-check --progress-bar off >"$log" 2>&1; then
      tail -n 40 "$log" >&2
      echo "error: pip $* failed; its whole output is in $log" >&2
      exit 1
    fi
  }
  say "upgrading pip in $venv"
  pip install --upgrade pip
  say "installing skyblink[$extras] and its dependencies into $venv (the first time takes a few minutes; log: $log)"
  pip install -e ".[$extras]"
  echo "$want" > "$stamp"
  say "installed skyblink[$extras] into $venv in $(( $(date +%s) - start )) s ($(du -sh "$venv" | cut -f1))"
else
  say "$venv has skyblink[$extras] installed and pyproject.toml unchanged: nothing to install"
fi
# Bytecode of skyblink's own modules: the editable install leaves the source tree uncompiled, every Ray
# worker and actor imports them at start, and where PYTHONDONTWRITEBYTECODE is set no process would ever
# write it (`skyblink.bytecode`; a night run says so). Quick when nothing changed.
"$venv/bin/python" -c 'import compileall, pathlib, sys, skyblink.bytecode as b
sys.exit(not all(compileall.compile_dir(d, quiet=1) for d in b.compile_folders(pathlib.Path("skyblink").resolve())))'
