#!/usr/bin/env bash
# The GPU check, one command (benchmarks/README.md, "The GPU check"). Prepare its inputs first with
# `bash benchmarks/gpu/prepare.sh` (the wheels and the pack, carried with the device tool's `carry`).
# Within REID_CHECK_BUDGET_S (default 420 s) on one GPU it installs the carried wheels, records the
# machine, measures the training step of ResNet50 and ResNet50-IBN-a (bf16 / TF32 / fp32 with
# channels_last, bf16 without; torch.compile on ResNet50-IBN-a only), the step fed by the GPU input
# pipeline from a native 128 x 64 store (and the pipeline alone), trains ResNet50-IBN-a from scratch at
# 256 x 128 on the packed Market-1501 through `reid train` for the epochs that fit what is left, then
# scores last.pt's one distance matrix on the GPU and on the CPU (metrics equal to 1e-6), and writes
# into $OUT: summary.json, bench.json, eval_compare.json, curve.json + curve.png, check.log (all
# output), logs.tar.gz (per-phase logs, params, plan, metrics).
# Every phase has its own cap and runs under `timeout`; the caps before and after training are
# reserved so that training always gets at least TRAIN_MIN_S and the whole run ends within the budget.
# A failed phase leaves the earlier results; the script exits 0 and ends with a table of the phases.
#
#   bash benchmarks/gpu/check.sh             # on the GPU machine (python3 = its torch; PYTHON to change)
#   bash benchmarks/gpu/check.sh --dry-run   # on the CPU: tiny synthetic pack, CPU device, no budget
#                                            # (also REID_CHECK_DRY_RUN=1); mlflow and dvc are blocked
# Environment: OUT (results; default ./gpu-check-out), PYTHON, REID_CHECK_BUDGET_S (default 420),
# REID_CHECK_WORK (scratch folder; default a new /tmp/reid-check.*), REID_CHECK_PACK (default
# pack/market1501.reidpack; the dry run builds a synthetic one unless given), REID_CHECK_WHEELS and
# REID_CHECK_LOCK (default benchmarks/gpu/wheels and wheels.lock; the dry run installs them only when
# REID_CHECK_WHEELS is given), REID_CHECK_SKIP (phases to leave out, of env and the bench_* ones, e.g.
# "bench_eager bench_nchw bench_compile": their caps are not reserved, so a rerun fits a smaller budget).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
  esac
done
[ "${REID_CHECK_DRY_RUN:-0}" = "1" ] && DRY=1
OUT=${OUT:-$REPO/gpu-check-out}
mkdir -p "$OUT"
WORK=${REID_CHECK_WORK:-$(mktemp -d /tmp/reid-check.XXXXXX)}
mkdir -p "$WORK/logs"
: > "$WORK/phases.tsv"
PY=${PYTHON:-python3}
BUDGET=${REID_CHECK_BUDGET_S:-420}
LOG=$OUT/check.log
: > "$LOG"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=${REID_CHECK_WHEELS:-$REPO/benchmarks/gpu/wheels}
LOCK=${REID_CHECK_LOCK:-$REPO/benchmarks/gpu/wheels.lock}
TOOLS=benchmarks/gpu/check_tools.py

# Caps in seconds, phase by phase. Training gets the budget minus what has run minus POST_S; the caps
# before it leave it at least TRAIN_MIN_S (checked below), which the plan turns into >= 2 short epochs.
CAP_WHEELS=15; CAP_ENV=25; CAP_EAGER=55; CAP_NCHW=20; CAP_PIPELINE=25; CAP_COMPILE=110; CAP_PREPARE=20
CAP_PLAN=15; CAP_EVAL=40; CAP_CURVE=10; CAP_SUMMARY=10; MARGIN=3; TRAIN_MIN_S=72
SKIP=" ${REID_CHECK_SKIP:-} "
for name in $SKIP; do
  case "$name" in
    env|bench_eager|bench_nchw|bench_pipeline|bench_compile) ;;
    *) echo "error: REID_CHECK_SKIP names $name; only env, bench_eager, bench_nchw, bench_pipeline and" \
            "bench_compile can be left out" >&2; exit 2 ;;
  esac
done
skipped() { [[ "$SKIP" == *" $1 "* ]]; }
cap_of() { if skipped "$1"; then echo 0; else echo "$2"; fi; }
PRE_S=$((CAP_WHEELS + $(cap_of env $CAP_ENV) + $(cap_of bench_eager $CAP_EAGER) + $(cap_of bench_nchw $CAP_NCHW)
         + $(cap_of bench_pipeline $CAP_PIPELINE) + $(cap_of bench_compile $CAP_COMPILE) + CAP_PREPARE + CAP_PLAN))
POST_S=$((CAP_EVAL + CAP_CURVE + CAP_SUMMARY + MARGIN))

SCALE=1
if [ "$DRY" = 1 ]; then
  # Timeouts catch hangs; on a shared CPU every Python start alone can take 10 s or more.
  SCALE=${REID_CHECK_TIMEOUT_SCALE:-5}
  # The GPU machine has neither mlflow nor dvc: make importing them fail here too, and record what
  # every process imports (the imports phase compares it with the GPU image's packages).
  export PYTHONPATH="$REPO/benchmarks/gpu/without_tracking:$PYTHONPATH"
  export REID_IMPORTS_LOG=$WORK/imports.txt
  DEVICE=cpu
  SMALL=(--device cpu --height 64 --width 32 --batch-p 4 --batch-k 2 --steps 1 --warmup 1 --threads 2)
  EAGER=("${SMALL[@]}" --backbones resnet18 --precision fp32)
  NCHW=("${SMALL[@]}" --backbones resnet18 --precision fp32 --no-channels-last)
  PIPELINE=("${SMALL[@]}" --backbones resnet18 --precision fp32 --with-augment --store-images 64
            --store-height 32 --store-width 16)
  INPUT_PIPELINE=(--device cpu --height 64 --width 32 --p 4 --k 2 --num-images 64 --tensor-steps 2 --warmup 1)
  COMPILE=("${SMALL[@]}" --backbones resnet18 --precision fp32)  # a CPU torch.compile takes 20-40 s: eager here
  PACK=${REID_CHECK_PACK:-$WORK/pack/synthetic.reidpack}
  OVERRIDES=(-o data.height=64 -o data.width=32 -o data.ids_per_batch=4 -o data.instances_per_id=4
             -o data.num_workers=0 -o data.test_batch_size=64 -o model.backbone=resnet18 -o model.channels_last=false
             -o train.device=cpu -o train.amp=off -o train.log_every_steps=1)
  PLAN=(--epochs 2 --max-steps 2)
  EXPECT_QUERY=0
else
  DEVICE=cuda
  if [ $((PRE_S + TRAIN_MIN_S + POST_S)) -gt "$BUDGET" ]; then
    echo "error: REID_CHECK_BUDGET_S=$BUDGET is too small: the phase caps need $PRE_S s before training and" \
         "$POST_S s after it, and training at least $TRAIN_MIN_S s (set it to $((PRE_S + TRAIN_MIN_S + POST_S)) or more)" >&2
    exit 2
  fi
  R50=(--device cuda --backbones resnet50 resnet50_ibn_a --steps 20 --warmup 5)
  EAGER=("${R50[@]}" --precision bf16 tf32 fp32)
  NCHW=("${R50[@]}" --precision bf16 --no-channels-last)
  PIPELINE=(--device cuda --backbones resnet50_ibn_a --precision bf16 --with-augment --store-images 12936 --steps 30
            --warmup 5)
  INPUT_PIPELINE=(--device cuda --tensor-steps 100 --warmup 5)
  COMPILE=(--device cuda --backbones resnet50_ibn_a --precision bf16 --compile --steps 20 --warmup 5)
  PACK=${REID_CHECK_PACK:-pack/market1501.reidpack}
  OVERRIDES=()
  PLAN=()
  EXPECT_QUERY=3368
fi
[[ $PACK = /* ]] || PACK=$REPO/$PACK
OVERRIDES+=(-o "data.root=$PACK" -o "data.manifest=$WORK/manifest.json" -o "train.output_dir=$WORK/run")

say() { echo "$*" | tee -a "$LOG"; }

# phase NAME CAP_S COMMAND...: run with its own timeout (the whole process group is killed; SIGTERM
# first, SIGKILL GRACE s later, both within the cap), output to the console, check.log and
# logs/NAME.log; the exit status goes to phases.tsv.
GRACE=2
phase() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if skipped "$name"; then
    printf '%s\tskip\t0\t0\n' "$name" >> "$WORK/phases.tsv"
    say "=== [${SECONDS}s] phase $name: skipped (REID_CHECK_SKIP)"
    return 0
  fi
  limit=$((limit * SCALE))
  if [ "$limit" -lt $((GRACE + 1)) ]; then limit=$((GRACE + 1)); fi
  say "=== [${SECONDS}s] phase $name (cap ${limit}s)"
  timeout -k "$GRACE" "$((limit - GRACE))" "$@" 2>&1 | tee "$WORK/logs/$name.log" >> "$LOG"
  rc=${PIPESTATUS[0]}
  tail -n 15 "$WORK/logs/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$WORK/phases.tsv"
  say "=== [${SECONDS}s] phase $name: exit $rc after $((SECONDS - start))s"
  return 0
}

say "reid GPU check: dry_run=$DRY out=$OUT work=$WORK budget=${BUDGET}s python=$PY pack=$PACK"

# 1. wheels: pydantic and its requirements, installed from the carried wheels (no index there).
wheels_step() {
  if [ "$DRY" = 1 ] && [ -z "${REID_CHECK_WHEELS:-}" ]; then
    # The prepared wheels are for CPython 3.12 on the GPU machine: here only the lock is checked.
    local wheels_arg=()
    compgen -G "$WHEELS/*.whl" > /dev/null && wheels_arg=(--wheels "$WHEELS")
    "$PY" "$TOOLS" lock --lock "$LOCK" "${wheels_arg[@]}" --any-installed-version --output "$WORK/lock.json"
  elif compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --upgrade \
      --target "$WORK/site" "$WHEELS"/*.whl || return 1
    "$PY" "$TOOLS" lock --lock "$LOCK" --wheels "$WHEELS" --output "$WORK/lock.json"
  else
    echo "no wheels in $WHEELS: run bash benchmarks/gpu/prepare.sh here and carry benchmarks/gpu/wheels"; return 1
  fi
}
export -f wheels_step
export PY TOOLS WHEELS LOCK WORK DRY
phase wheels "$CAP_WHEELS" bash -c wheels_step

# 2. environment: the GPU, the driver, torch and CUDA.
env_step() {
  if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not on this machine"; fi
  # This step probes whether mlflow/dvc import, on purpose: keep the probe out of the blocked-import log
  # that tests read to prove reid itself never tries.
  REID_BLOCKED_IMPORTS_LOG= "$PY" - "$WORK/env.json" <<'PYEOF'
import json, os, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
        "host": platform.node(), "cpus": os.cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                multiprocessors=p.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
try:
    import pydantic
    info["pydantic"] = pydantic.VERSION
except ImportError as exc:
    info["pydantic"] = f"missing: {exc}"
for name in ("mlflow", "dvc"):
    try:
        __import__(name)
        info[name] = "importable"
    except ImportError:
        info[name] = "not importable"
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PYEOF
}
export -f env_step
phase env "$CAP_ENV" bash -c env_step

# 3. the training step: numerics and memory layout (eager), the step fed by the GPU input pipeline from
#    a native 128 x 64 store (upsampled per batch, as in training) plus the pipeline alone, then compile.
BENCH=benchmarks/bench_training.py
phase bench_eager "$CAP_EAGER" "$PY" $BENCH "${EAGER[@]}" --output "$WORK/bench_eager.json"
phase bench_nchw "$CAP_NCHW" "$PY" $BENCH "${NCHW[@]}" --output "$WORK/bench_nchw.json"
pipeline_step() {
  "$PY" $BENCH "${PIPELINE[@]}" --output "$WORK/bench_pipeline.json" || return 1
  "$PY" benchmarks/bench_input_pipeline.py --cases tensor "${INPUT_PIPELINE[@]}" --out "$WORK/input_pipeline"
}
phase bench_pipeline "$CAP_PIPELINE" bash -c "$(declare -p PIPELINE INPUT_PIPELINE); BENCH=$BENCH; $(declare -f pipeline_step); pipeline_step"
phase bench_compile "$CAP_COMPILE" "$PY" $BENCH "${COMPILE[@]}" --output "$WORK/bench_compile.json"

# 4. the data: the carried pack (dry run: a tiny synthetic one built by prepare.py), then its manifest.
prepare_step() {
  if [ "$DRY" = 1 ] && [ ! -f "$PACK" ]; then
    "$PY" -m reid.cli synth "$WORK/synthetic" --num-train-ids 8 --num-test-ids 6 --cameras 3 --images-per-id 6 \
      --height 64 --width 32 || return 1
    "$PY" benchmarks/gpu/prepare.py --skip wheels size --dataset "$WORK/synthetic" --pack "$PACK" --expect any || return 1
  fi
  [ -f "$PACK" ] || { echo "no pack at $PACK: run bash benchmarks/gpu/prepare.sh here and carry pack"; return 1; }
  "$PY" -m reid.cli prepare --params benchmarks/gpu/params_h200.yaml "${OVERRIDES[@]}" || return 1
  "$PY" - "$WORK/manifest.json" "$EXPECT_QUERY" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
sizes = {s: len(m[s]) for s in ("train", "query", "gallery")}
print("manifest:", sizes)
if int(sys.argv[2]) and (sizes["query"], sizes["gallery"]) != (3368, 15913):
    sys.exit(f"expected the full Market-1501 protocol (3368 query x 15913 gallery), got {sizes}")
PYEOF
}
phase prepare "$CAP_PREPARE" bash -c "$(declare -p OVERRIDES PACK DRY PY WORK EXPECT_QUERY); $(declare -f prepare_step); prepare_step"

# 5. the plan: epochs (and steps per epoch) of the recipe's compressed schedule that fit the time the
#    train phase will get, at the measured throughput of the step fed by the input pipeline.
train_limit() {
  if [ "$DRY" = 1 ]; then echo 240; else echo $((BUDGET - SECONDS - POST_S - ${1:-0})); fi
}
phase plan "$CAP_PLAN" "$PY" "$TOOLS" plan --base benchmarks/gpu/params_h200.yaml --params-out "$WORK/params.yaml" \
  --output "$WORK/plan.json" --budget-s "$(train_limit $((CAP_PLAN + 8)))" --bench-log "$WORK/logs/bench_pipeline.log" \
  --backbone resnet50_ibn_a "${PLAN[@]}" "${OVERRIDES[@]}"

# 6. training, within the time left (SIGTERM: last.pt keeps the last completed epoch).
GRACE=8 phase train "$(train_limit)" "$PY" -m reid.cli train --params "$WORK/params.yaml"

# 7. last.pt's features and one distance matrix on the device; that matrix scored on the device and on
#    the CPU (must be equal to 1e-6); CPU-computed distances reported beside it.
phase eval_compare "$CAP_EVAL" "$PY" "$TOOLS" compare --checkpoint "$WORK/run/last.pt" \
  --manifest "$WORK/manifest.json" --device "$DEVICE" --output "$OUT/eval_compare.json"

# 8. the training curve from the run's metrics file (metrics.jsonl, written with MLflow off too).
phase curve "$CAP_CURVE" "$PY" "$TOOLS" curve --metrics "$WORK/run/metrics.jsonl" --output "$OUT/curve.json" \
  --png "$OUT/curve.png"

# Dry run: everything the processes imported is on the GPU image or in the wheels.
[ "$DRY" = 1 ] && phase imports "$CAP_CURVE" "$PY" "$TOOLS" imports --log "$WORK/imports.txt"

# Summary (always), and every small file of the work folder in one archive ($OUT takes 8 files).
summary_args=(--work "$WORK" --out "$OUT" --wall-s "$SECONDS" --budget-s "$BUDGET")
[ "$DRY" = 1 ] && summary_args+=(--dry-run)
timeout -k 2 "$((CAP_SUMMARY * SCALE - 4))" "$PY" "$TOOLS" summary "${summary_args[@]}" 2>&1 | tee -a "$LOG"
(cd "$WORK" && tar -czf "$OUT/logs.tar.gz" logs phases.tsv $(ls plan.json params.yaml lock.json env.json \
  bench_*.json input_pipeline/*.json run/metrics.json run/config.yaml 2>/dev/null))
say "done in ${SECONDS}s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit 0
