#!/usr/bin/env bash
# Train -> export -> track, end to end on synthetic data (about 5 minutes on 2 CPU cores):
#
#   bash scripts/track_example.sh [WORKDIR]      # default WORKDIR: .track-example (git-ignored)
#
# 1. a synthetic Market-format dataset of 60 people (`reid synth`, seed 1) and its manifest (`reid prepare`);
# 2. a ResNet-18 at 64 x 32 trained on it (`reid train`, scripts/track_example_params.yaml);
# 3. its export for BoxMOT (`reid export --for boxmot`: model.onnx + model.onnx.metadata.json, parity
#    and BoxMOT load check);
# 4. a synthetic video in the MOT-challenge layout with *other* people (seed 0) walking, meeting and turning
#    back, with detections in det/det.txt (reid.data.synthetic_sequence);
# 5. BoxMOT's BoT-SORT on it with our model (scripts/track_boxmot.py): track ids per frame, then the
#    identity switches, MOTA and IDF1 against the sequence's ground truth.
# Needs the trackers extra: pip install -e '.[trackers]' (scripts/setup_venv.sh installs it).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$REPO/.track-example}"
mkdir -p "$WORK"
cd "$WORK"
cp "$REPO/scripts/track_example_params.yaml" params.yaml

reid synth data/synthetic-people --num-train-ids 60 --num-test-ids 20 --cameras 3 --images-per-id 8 --seed 1
reid prepare -p params.yaml
reid train -p params.yaml
reid export pipeline/models/tracking/last.pt --for boxmot --output model.onnx --no-track
rm -rf sequence
python -c "from reid.data.synthetic_sequence import generate_sequence; generate_sequence('sequence', seed=0)"
python "$REPO/scripts/track_boxmot.py" sequence --model model.onnx --tracker botsort --output tracks.txt
