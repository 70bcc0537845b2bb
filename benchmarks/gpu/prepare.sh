#!/usr/bin/env bash
# Prepare the GPU check's one call (benchmarks/README.md, "The GPU check"): the wheels the GPU image
# lacks, the packed Market-1501, and the size of what travels; prints the device tool's run call
# (command, carry, timeout_s) or exits 1 naming what is missing. See benchmarks/gpu/prepare.py.
#
#   bash benchmarks/gpu/prepare.sh [--dataset DIR] [--force] [--json FILE] ...
# Environment: PYTHON (default .venv/bin/python, else python3), REID_MARKET_ROOT, REID_CHECK_BUDGET_S.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
export PYTHON=$PY
exec "$PY" "$REPO/benchmarks/gpu/prepare.py" "$@"
