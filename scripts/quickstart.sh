#!/usr/bin/env bash
# Quickstart: one command on a fresh machine, about 6 minutes on 2 CPU cores (3 of them to set up .venv).
#
#   bash scripts/quickstart.sh
#
# 1. sets up .venv (creates it, installs torch and this project) when that is not done yet;
# 2. copies the project into .quickstart/ (git-ignored) as its own git + DVC repository, so nothing
#    committed here is modified;
# 3. generates a small synthetic Market-format dataset there (`reid synth`), and writes the CPU-sized
#    parameters of scripts/quickstart_params.yaml as that copy's params.yaml;
#    plus a second synthetic domain (other people, other camera style), the cross-domain target;
# 4. runs the same dvc.yaml as the real experiment end to end (`dvc repro`): prepare, baseline,
#    self-distillation and offline-KD variants, evaluation of each on its own test split and on the
#    second domain, comparison (with a cross-domain column);
# 5. extracts the gallery with the baseline's ONNX export (stage export@baseline) and searches it for one
#    query image (reid extract / reid search), printing where the ranked-list picture is;
# 6. prints the comparison table and how to open the MLflow UI on those runs.
#
# Environment: REID_QUICKSTART_DIR (default .quickstart), PYTHON and REID_VENV (see setup_venv.sh).
# The synthetic data is for trying the tools only; its numbers say nothing about Market-1501.
set -euo pipefail

started=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QS="${REID_QUICKSTART_DIR:-$REPO/.quickstart}"
VENV="${REID_VENV:-$REPO/.venv}"

say() { printf '\n==> %s\n' "$*"; }

command -v git >/dev/null || { echo "error: the quickstart needs git (DVC experiments are git commits)" >&2; exit 1; }
git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1 || {
  echo "error: $REPO is not a git checkout; clone the repository with git to run the quickstart" >&2; exit 1; }

say "Python environment ($VENV)"
bash "$REPO/scripts/setup_venv.sh"
export PATH="$VENV/bin:$PATH"
export DVC_NO_ANALYTICS=1

say "Scratch copy of the project in $QS"
case "$QS" in "$REPO"|"/"|"") echo "error: refusing to use $QS as the quickstart folder" >&2; exit 1;; esac
rm -rf "$QS"
mkdir -p "$QS"
# Tracked files plus new, not-ignored ones (so a working copy with uncommitted edits is what runs);
# never a previous run's results or lock file, and our own parameters instead of the Market ones.
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
  while IFS= read -r -d '' f; do
    case "$f" in pipeline/*|dvc.lock|params.yaml|.quickstart/*) continue ;; esac
    [ -f "$REPO/$f" ] && printf '%s\0' "$f"
  done | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$QS"
cp "$REPO/scripts/quickstart_params.yaml" "$QS/params.yaml"
cd "$QS"

say "Synthetic Market-format dataset (data/synthetic-market)"
reid synth data/synthetic-market --num-train-ids 24 --num-test-ids 16 --cameras 3 --images-per-id 8 \
  --height 64 --width 32 --seed 0

say "A second synthetic domain, the cross-domain target (data/synthetic-domain-b)"
reid synth data/synthetic-domain-b --num-train-ids 4 --num-test-ids 16 --cameras 3 --images-per-id 8 \
  --height 64 --width 32 --seed 0 --domain 1

git init -q
printf '/data/\n' >> .git/info/exclude   # generated input, not part of the project
git add -A
git -c user.name=quickstart -c user.email=quickstart@localhost commit -qm "quickstart: project copy with CPU-sized params"

say "dvc repro: the pipeline of dvc.yaml, stage by stage"
dvc repro
git add -A
git -c user.name=quickstart -c user.email=quickstart@localhost commit -qm "quickstart: pipeline results" || true

say "Use the baseline: its ONNX export (stage export@baseline), a gallery, one search"
head -n 9 pipeline/export/baseline/model.parity.json
reid extract --split gallery --manifest pipeline/data/manifest.json --model pipeline/export/baseline/model.onnx \
  --output search/gallery.npz
query_image=$(find data/synthetic-market/query -name '*.jpg' | sort | head -n 1)
reid search "$query_image" --gallery search/gallery.npz --top-k 5 --output search/search.png

elapsed=$(( $(date +%s) - started ))
say "Comparison (pipeline/compare/comparison.md)"
cat pipeline/compare/comparison.md
cat <<EOF

Quickstart finished in $((elapsed / 60)) min $((elapsed % 60)) s. Everything is in $QS:
  models         pipeline/models/<name>/last.pt   metrics  pipeline/eval/<name>/metrics.json
  cross-domain   pipeline/eval/<name>/targets/synth_b/metrics.json (eval/synth_b/* in MLflow)
  comparison     pipeline/compare/comparison.{md,csv,png}
  exported model pipeline/export/baseline/model.onnx (+ model.parity.json)
  search         search/search.png  (ranked list of $query_image; gallery features in search/gallery.npz)

Look around (PATH needs $VENV/bin, or activate it: source $VENV/bin/activate):
  cd $QS
  dvc metrics show                  # every model's metrics
  dvc plots show                    # CMC curves and the comparison chart -> dvc_plots/index.html
  dvc exp run -S 'variants.sd_003.kd.feature_loss_coefficient=0.05'   # reruns only that variant
  dvc exp show
  reid ui                           # MLflow UI on the runs in $QS/mlflow.db (127.0.0.1:5000); it prints
                                    # the page comparing the models by mAP (docs/MLFLOW_UI.md)
EOF
