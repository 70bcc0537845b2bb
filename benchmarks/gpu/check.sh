#!/usr/bin/env bash
# The GPU check, one command (benchmarks/README.md, "The GPU check"): within about 9 minutes on one
# H200 it installs the carried wheels, records the machine, benchmarks the training step
# (resnet18 / resnet50 / resnet50_ibn_a in bf16: eager, --compile, --with-augment), trains
# ResNet50-IBN-a at 256 x 128 on the packed Market-1501 through `reid train` (GPU input pipeline,
# bf16, channels_last, no MLflow) for as many epochs of the recipe's compressed schedule as fit the
# time left, then evaluates the last checkpoint on the full 3,368 x 15,913 protocol on the GPU and on
# the CPU (metrics equal to 1e-6), and writes everything into $OUT:
#   summary.json (phases, img/s, memory, plan, metrics, epoch times), bench.json, eval_compare.json,
#   curve.json + curve.png (training curve), check.log (all output), logs.tar.gz (per-phase logs,
#   params, plan, metrics).
# Every phase has its own timeout; a failed phase leaves the earlier results; the script exits 0
# and ends with a table of which phases passed.
#
#   bash benchmarks/gpu/check.sh             # on the GPU machine (python3 = its torch; PYTHON to change)
#   bash benchmarks/gpu/check.sh --dry-run   # on the CPU: tiny synthetic pack, CPU device, seconds
#                                            # (also REID_CHECK_DRY_RUN=1); mlflow and dvc are blocked
# Environment: OUT (results; default ./gpu-check-out), PYTHON, REID_CHECK_BUDGET_S (default 540),
# REID_CHECK_WORK (scratch folder; default a new /tmp/reid-check.*).
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
BUDGET=${REID_CHECK_BUDGET_S:-540}
LOG=$OUT/check.log
: > "$LOG"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
WHEELS=$REPO/benchmarks/gpu/wheels
TOOLS=benchmarks/gpu/check_tools.py
BACKBONES=(resnet18 resnet50 resnet50_ibn_a)

SCALE=1
if [ "$DRY" = 1 ]; then
  # Timeouts catch hangs; on a shared CPU every Python start alone can take 10 s or more.
  SCALE=${REID_CHECK_TIMEOUT_SCALE:-5}
  # The GPU machine has neither mlflow nor dvc: make importing them fail here too.
  export PYTHONPATH="$REPO/benchmarks/gpu/without_tracking:$PYTHONPATH"
  DEVICE=cpu
  BENCH=(--device cpu --amp off --backbones resnet18 --height 64 --width 32 --batch-p 4 --batch-k 2
         --steps 1 --warmup 1 --threads 2 --store-images 64)
  COMPILE=()  # a CPU torch.compile takes 20-40 s: the dry run times the compile phase eagerly
  PACK=$WORK/pack/synthetic.reidpack
  PLAN=(--epochs 2 -o data.height=64 -o data.width=32 -o data.ids_per_batch=4 -o data.instances_per_id=4
        -o data.num_workers=0 -o data.test_batch_size=64 -o model.backbone=resnet18 -o model.channels_last=false
        -o train.device=cpu -o train.amp=off -o train.max_steps_per_epoch=2 -o train.log_every_steps=1)
  EXPECT_QUERY=0
else
  DEVICE=cuda
  BENCH=(--device cuda --amp bf16 --backbones "${BACKBONES[@]}" --steps 30 --warmup 5)
  COMPILE=(--compile)
  PACK=$REPO/pack/market1501.reidpack
  PLAN=()
  EXPECT_QUERY=3368
fi

say() { echo "$*" | tee -a "$LOG"; }

# phase NAME TIMEOUT_S COMMAND...: run with its own timeout (the whole process group is killed),
# output to the console, check.log and logs/NAME.log; the exit status goes to phases.tsv.
phase() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if [ "$limit" -lt 5 ]; then limit=5; fi
  limit=$((limit * SCALE))
  say "=== [${SECONDS}s] phase $name (timeout ${limit}s)"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$WORK/logs/$name.log" >> "$LOG"
  rc=${PIPESTATUS[0]}
  tail -n 15 "$WORK/logs/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$WORK/phases.tsv"
  say "=== [${SECONDS}s] phase $name: exit $rc after $((SECONDS - start))s"
  return 0
}

say "reid GPU check: dry_run=$DRY out=$OUT work=$WORK budget=${BUDGET}s python=$PY"

# 1. wheels: pydantic and its requirements, installed from the carried wheels (no index there).
wheels_step() {
  if [ "$DRY" = 1 ]; then
    # The wheels are for CPython 3.12 on the GPU machine; here they are only checked against the lock.
    local wheels_arg=()
    compgen -G "$WHEELS/*.whl" > /dev/null && wheels_arg=(--wheels "$WHEELS")
    [ ${#wheels_arg[@]} = 0 ] && echo "no wheels in $WHEELS (benchmarks/gpu/download_wheels.sh fetches them)"
    "$PY" "$TOOLS" lock "${wheels_arg[@]}" --any-installed-version --output "$WORK/lock.json"
  elif compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$WHEELS"/*.whl || return 1
    "$PY" "$TOOLS" lock --wheels "$WHEELS" --output "$WORK/lock.json"
  else
    echo "no wheels in $WHEELS: run bash benchmarks/gpu/download_wheels.sh and carry benchmarks/gpu/wheels"; return 1
  fi
}
export -f wheels_step
export PY TOOLS WHEELS WORK DRY
phase wheels 90 bash -c wheels_step

# 2. environment: the GPU, the driver, torch and CUDA.
env_step() {
  if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not on this machine"; fi
  # This step probes whether mlflow/dvc import, on purpose: keep the probe out of the blocked-import log
  # that tests read to prove reid itself never tries.
  REID_BLOCKED_IMPORTS_LOG= "$PY" - "$WORK/env.json" <<'PYEOF'
import json, platform, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
        "host": platform.node(), "cpus": __import__("os").cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                bf16=torch.cuda.is_bf16_supported())
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
phase env 60 bash -c env_step

# 3. training-step throughput: eager, compiled, and with the GPU input pipeline in the step.
phase bench_eager 90 "$PY" benchmarks/bench_training.py "${BENCH[@]}" --output "$WORK/bench_eager.json"
phase bench_compile 180 "$PY" benchmarks/bench_training.py "${BENCH[@]}" "${COMPILE[@]}" \
  --output "$WORK/bench_compile.json"
phase bench_augment 90 "$PY" benchmarks/bench_training.py "${BENCH[@]}" --with-augment \
  --output "$WORK/bench_augment.json"

# 4. the data: the carried pack (dry run: a tiny synthetic one), then its manifest.
data_step() {
  if [ "$DRY" = 1 ]; then
    "$PY" -m reid.cli synth "$WORK/synthetic" --num-train-ids 8 --num-test-ids 6 --cameras 3 --images-per-id 6 \
      --height 64 --width 32 || return 1
    "$PY" scripts/pack_market.py --root "$WORK/synthetic" --output "$PACK" --threads 2 || return 1
  fi
  [ -f "$PACK" ] || { echo "no pack at $PACK: run scripts/pack_market.py and carry pack/"; return 1; }
}
export -f data_step
export PACK
phase data 120 bash -c data_step

# 5. the plan: epochs of the recipe's schedule that fit what is left of the budget, minus a reserve
#    for the evaluation comparison, the curve and the summary.
RESERVE=110
TRAIN_LIMIT=$((BUDGET - SECONDS - RESERVE))
[ "$DRY" = 1 ] && TRAIN_LIMIT=240
phase plan 60 "$PY" "$TOOLS" plan --base benchmarks/gpu/params_h200.yaml --params-out "$WORK/params.yaml" \
  --output "$WORK/plan.json" --budget-s "$((TRAIN_LIMIT - 20))" --bench-log "$WORK/logs/bench_augment.log" \
  --bench-log "$WORK/logs/bench_eager.log" \
  --backbone resnet50_ibn_a "${PLAN[@]}" -o "data.root=$PACK" -o "data.manifest=$WORK/manifest.json" \
  -o "train.output_dir=$WORK/run"
prepare_step() {
  "$PY" -m reid.cli prepare --params "$WORK/params.yaml" || return 1
  "$PY" - "$WORK/manifest.json" "$EXPECT_QUERY" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
sizes = {s: len(m[s]) for s in ("train", "query", "gallery")}
print("manifest:", sizes)
if int(sys.argv[2]) and (sizes["query"], sizes["gallery"]) != (3368, 15913):
    sys.exit(f"expected the full Market-1501 protocol (3368 query x 15913 gallery), got {sizes}")
PYEOF
}
export -f prepare_step
export EXPECT_QUERY
phase prepare 90 bash -c prepare_step

# 6. training, guarded by the time left (SIGTERM: last.pt keeps the last completed epoch).
TRAIN_LIMIT=$((BUDGET - SECONDS - RESERVE))
[ "$DRY" = 1 ] && TRAIN_LIMIT=240
phase train "$TRAIN_LIMIT" "$PY" -m reid.cli train --params "$WORK/params.yaml"

# 7. the same checkpoint evaluated on the device and on the CPU: metrics equal to 1e-6.
phase eval_compare 120 "$PY" "$TOOLS" compare --checkpoint "$WORK/run/last.pt" --manifest "$WORK/manifest.json" \
  --device "$DEVICE" --output "$OUT/eval_compare.json"

# 8. the training curve from the training log.
phase curve 60 "$PY" "$TOOLS" curve --log "$WORK/logs/train.log" --output "$OUT/curve.json" --png "$OUT/curve.png"

# Summary (always), and every small file of the work folder in one archive ($OUT takes 8 files).
summary_args=(--work "$WORK" --out "$OUT" --wall-s "$SECONDS")
[ "$DRY" = 1 ] && summary_args+=(--dry-run --batch 16)
"$PY" "$TOOLS" summary "${summary_args[@]}" 2>&1 | tee -a "$LOG"
(cd "$WORK" && tar -czf "$OUT/logs.tar.gz" logs phases.tsv $(ls plan.json params.yaml lock.json env.json \
  bench_*.json run/metrics.json run/config.yaml 2>/dev/null))
say "done in ${SECONDS}s; results in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit 0
