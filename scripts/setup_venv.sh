#!/usr/bin/env bash
# Make .venv ready to run the project: create it if missing, install torch when it is not importable,
# and install this checkout (editable, with the test, trackers and deploy extras) when reid/dvc/mlflow/pytest/
# boxmot/faiss are missing or the installed `reid` comes from another checkout. Quick (about 2 s) when everything is in place, so
# the quickstart and the test script can call it every time.
#
#   bash scripts/setup_venv.sh           # only what is missing
#   bash scripts/setup_venv.sh --force   # always reinstall the project (CI, after pyproject changes)
#
# Environment: PYTHON (interpreter for a new venv, default python3), REID_VENV (default .venv),
# REID_EXTRAS (default test,trackers,deploy; the trackers extra, BoxMOT + motmetrics, adds about 20 s and 380 MB;
# deploy adds faiss-cpu, about 30 MB).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${REID_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${REID_EXTRAS:-test,trackers,deploy}"
# The torch/torchvision pair known to install and import here (see docs); any importable torch is kept.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: $PYTHON is missing or older than Python 3.10; set PYTHON=/path/to/python3.10+" >&2
    exit 1
  fi
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  echo "setup: installing ${TORCH_PINS[*]} (about 1 minute from a wheel cache, longer from the internet)"
  "$PY" -m pip install --disable-pip-version-check "${TORCH_PINS[@]}"
fi

installed_here() {
  # True when the project, its tools and test extras import, and `reid` is this checkout's code.
  "$PY" - "$REPO" "$EXTRAS" <<'PY' 2>/dev/null
import importlib.util, pathlib, sys
# find_spec locates a package without importing it (mlflow and dvc take seconds to import).
names = ["reid", "dvc", "mlflow", "typer", "pydantic", "pytest", "scipy", "psycopg2"]
names += ["boxmot", "motmetrics"] if "trackers" in sys.argv[2].split(",") else []
names += ["faiss", "onnxruntime"] if "deploy" in sys.argv[2].split(",") else []
specs = [importlib.util.find_spec(m) for m in names]
if any(s is None for s in specs):
    sys.exit(1)
origin = pathlib.Path(specs[0].origin).resolve()
sys.exit(0 if origin.is_relative_to(pathlib.Path(sys.argv[1]).resolve()) else 1)
PY
}

if [ "${1:-}" = "--force" ] || ! installed_here || [ ! -x "$VENV/bin/reid" ]; then
  echo "setup: pip install -e \"$REPO[$EXTRAS]\""
  "$PY" -m pip install --disable-pip-version-check -e "$REPO[$EXTRAS]"
fi
