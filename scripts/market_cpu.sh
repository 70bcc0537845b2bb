#!/usr/bin/env bash
# The CPU track of the real Market-1501 experiment: every model of scripts/market_cpu_params.yaml
# trained and evaluated on the real data through the same dvc.yaml, every run in MLflow.
#
#   bash scripts/market_cpu.sh                       # everything: the 14 models, one after another; each
#   # trained (with its evaluations during training) in 13.5-16 min on the 2-core AMD EPYC VM when it ran
#   # alone, a KD student in 18-19 min, the evaluate/export stages on top (2026-12-07, wall_time_s in
#   # benchmarks/results/market1501_cpu_recipe_2026-12-06.json)
#   bash scripts/market_cpu.sh train_baseline        # arguments go to `dvc repro` (stage names)
#   REID_MARKET_ROOT=/data/Market-1501-v15.09.15 bash scripts/market_cpu.sh
#   # the baseline alone (train + evaluate), with today's code, in its own copy beside the recorded run:
#   REID_MARKET_CPU_DIR="$PWD/.market-cpu-baseline" bash scripts/market_cpu.sh train_baseline evaluate@baseline
#   .venv/bin/python scripts/market_cpu_results.py .market-cpu-baseline --partial --out benchmarks/results/<name>.json
#
# Like the quickstart it works in a copy of the project, .market-cpu/ (git-ignored), so the checkout
# is never modified and the copy's code is the code that runs (PYTHONPATH points at it). A second
# call reuses the copy: DVC skips every stage whose inputs did not change, so an interrupted run
# continues where it stopped. `--fresh` first deletes the copy (and with it every result there).
# Results: .market-cpu/pipeline/{models,eval,compare}, MLflow store .market-cpu/mlflow.db
# (reid ui --params .market-cpu/params.yaml), and scripts/market_cpu_results.py collects them
# into benchmarks/results/market1501_cpu_<date>.json.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${REID_MARKET_CPU_DIR:-$REPO/.market-cpu}"
VENV="${REID_VENV:-$REPO/.venv}"
MARKET="${REID_MARKET_ROOT:-$REPO/../shared/data/Market-1501-v15.09.15}"

if [ "${1:-}" = "--fresh" ]; then
  shift
  case "$RUN" in "$REPO"|"/"|"") echo "error: refusing to delete $RUN" >&2; exit 1;; esac
  rm -rf "$RUN"
fi
if [ ! -d "$MARKET/bounding_box_train" ]; then
  echo "error: no Market-1501 at $MARKET (bounding_box_train/ missing); set REID_MARKET_ROOT to the dataset folder" >&2
  exit 1
fi
MARKET="$(cd "$MARKET" && pwd)"

bash "$REPO/scripts/setup_venv.sh"
export PATH="$VENV/bin:$PATH"
export DVC_NO_ANALYTICS=1

if [ ! -d "$RUN/.git" ]; then
  echo "==> project copy in $RUN"
  mkdir -p "$RUN"
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
    while IFS= read -r -d '' f; do
      case "$f" in pipeline/*|dvc.lock|params.yaml|.quickstart/*|.market-cpu*/*) continue ;; esac
      [ -f "$REPO/$f" ] && printf '%s\0' "$f"
    done | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$RUN"
  # The dataset root is absolute in the copy: a relative one would resolve inside .market-cpu/.
  "$VENV/bin/python" - "$REPO/scripts/market_cpu_params.yaml" "$RUN/params.yaml" "$MARKET" <<'PY'
import sys, yaml
tree = yaml.safe_load(open(sys.argv[1]))
tree["data"]["root"] = sys.argv[3]
open(sys.argv[2], "w").write(yaml.safe_dump(tree, sort_keys=False))
PY
  # Which code the copy holds: the checkout's commit, "+dirty" when it had uncommitted changes.
  (cd "$REPO" && echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo +dirty)") > "$RUN/source_commit.txt"
  cd "$RUN"
  git init -q
  git add -A
  git -c user.name=market-cpu -c user.email=market-cpu@localhost commit -qm "market-cpu: project copy with CPU-track params"
fi
cd "$RUN"
# The copy's package, not the checkout's editable install: edits in the checkout during a
# multi-hour run must not change the code of the stages still to come.
export PYTHONPATH="$RUN${PYTHONPATH:+:$PYTHONPATH}"
echo "==> dvc repro $* (in $RUN, reid from $(python -c 'import reid, os; print(os.path.dirname(reid.__file__))'))"
dvc repro "$@"
git add -A && git -c user.name=market-cpu -c user.email=market-cpu@localhost commit -qm "market-cpu: results" || true
[ -f pipeline/compare/comparison.md ] && cat pipeline/compare/comparison.md || true
