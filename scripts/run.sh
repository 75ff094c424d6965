#!/usr/bin/env bash
# Set up everything on a fresh machine (idempotent), then run one job:
#   bash scripts/run.sh demo    # the main job on the built-in defaults (real model, real data, offline)
#   bash scripts/run.sh test    # the test suite (what CI runs)
#   bash scripts/run.sh <any tensorllm arguments>
# Set-up: a virtual environment in .venv (PYTHON picks the interpreter), torch (TORCH_SPEC, default
# the CPU build torch==2.13.0 unless the venv already has torch), then this package with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.tensorllm-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$PY" -m pip install -q --upgrade pip >&2
  if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${TORCH_SPEC:-torch==2.13.0}" >&2
    "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}" >&2
  fi
  echo "[setup] installing tensorllm and its dependencies" >&2
  "$PY" -m pip install -q -e ".[test]" >&2
  touch "$stamp"
fi

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_VERBOSITY=${TRANSFORMERS_VERBOSITY:-error}
[ $# -gt 0 ] || set -- demo
case "$1" in
  test)
    shift || true
    if [ $# -eq 0 ]; then  # the whole suite (CI): lint and format first, so style drift fails loudly too
      echo "[test] ruff check + ruff format --check" >&2
      "$VENV/bin/ruff" check .
      "$VENV/bin/ruff" format --check .
      # TEST_WORKERS processes (default 2, CI's cores), whole files per process, one compute thread each
      # (two processes of two threads on two cores ran single tests up to 7x slower than alone)
      export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
      set -- -n "${TEST_WORKERS:-2}" --dist loadfile --durations=15
    fi
    exec "$PY" -m pytest -q -p no:cacheprovider "$@"
    ;;
  *)
    exec "$VENV/bin/tensorllm" "$@"
    ;;
esac
