#!/usr/bin/env bash
# scripts/gpu_check.sh DIR: everything that needs a CUDA GPU, on a bare machine, in under 8 minutes.
#
# Runs from a checkout with the torch already installed there (PYTHONPATH=., nothing installed, no
# network): the CUDA-parametrised tests (when pytest is there), a short training of each backend on
# CUDA (synthetic data) and of the custom one with --cuda-graphs (its steps/s beside the eager run's
# in cuda_graphs.json), `mlp-torch bench --json` and `bench --end-to-end --quick` on CUDA (the
# cat/dog JPEGs when ../shared/data/cifar10-jpg is there, else synthetic images). Each step has its
# own time limit (together 450 s, so the whole check ends within 8 minutes); a failing step is
# recorded and the others still run.
#
# Writes into DIR: gpu_check.log (everything printed), bench.json, end_to_end.json, cuda_graphs.json,
# runs/ and gpu_check.json ({"torch", "gpu", "steps": {name: {"exit", "seconds"}}}). Exits 0 when
# every step passed, 1 when one failed, 2 for bad usage or a machine without CUDA.
# PYTHON picks the interpreter (default python3).

set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: scripts/gpu_check.sh DIR  (the log and the JSON files are written into DIR)" >&2
    exit 2
fi
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check.sh needs a CUDA GPU, and $PY's torch sees none: run it on a CUDA machine" >&2
    exit 2
fi

OUT=$1
mkdir -p "$OUT/runs" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
: >"$LOG"
STEPS=""
FAILED=0

# step NAME SECONDS COMMAND...: run it under a time limit, log it, record its exit status and time
step() {
    local name=$1 limit=$2 started rc
    shift 2
    echo "=== $name: $*" | tee -a "$LOG"
    started=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local seconds
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    echo "=== $name: exit $rc after ${seconds} s" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || FAILED=1
    STEPS="$STEPS${STEPS:+, }\"$name\": {\"exit\": $rc, \"seconds\": $seconds}"
}

"$PY" - <<'EOF' | tee -a "$LOG"
import importlib.util, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
missing = [m for m in ("torchvision", "tensorboard", "PIL", "tqdm", "pytest", "hypothesis") if importlib.util.find_spec(m) is None]
print("missing modules:", ", ".join(missing) or "none")
EOF

if "$PY" -c 'import pytest' 2>/dev/null; then
    step cuda_tests 110 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests
else
    echo "=== cuda_tests: skipped, pytest is not installed" | tee -a "$LOG"
fi
for backend in builtin custom manual; do
    step "train_$backend" 40 "$PY" -m mlp_torch train --dataset synthetic --device cuda --epochs 2 \
        --backend "$backend" --runs-dir "$OUT/runs" --name "gpu-check-$backend" --no-progress
done
# --cuda-graphs beside train_custom (the same job): steps/s of both, from their second epoch
step train_custom_cuda_graphs 40 "$PY" -m mlp_torch train --dataset synthetic --device cuda --epochs 2 \
    --backend custom --cuda-graphs --runs-dir "$OUT/runs" --name gpu-check-custom-cuda-graphs --no-progress
step cuda_graphs_vs_eager 15 "$PY" - "$OUT/runs" "$OUT/cuda_graphs.json" <<'EOF'
import json, sys
from pathlib import Path

summary = {}
for name in ("gpu-check-custom", "gpu-check-custom-cuda-graphs"):
    run = sorted(Path(sys.argv[1]).glob(f"{name}_*"))[-1]  # the latest run of that name
    history = json.loads((run / "metrics.json").read_text())["history"]
    info = json.loads((run / "config.json").read_text())
    steps = -(-sum(info["data"]["counts"]["train"].values()) // info["config"]["batch_size"])
    seconds = history[1]["seconds"] - history[0]["seconds"]  # the second epoch's training, the capture done
    loss = history[-1]["train_loss"]
    summary[name] = {"epoch_seconds": seconds, "steps_per_second": steps / seconds, "train_loss": loss}
    print(f"{name}: {steps} steps in {seconds:.3f} s ({steps / seconds:.0f} steps/s), train loss {loss:.6f}")
Path(sys.argv[2]).write_text(json.dumps(summary, indent=2))
EOF
step bench 75 "$PY" -m mlp_torch bench --quick --device cuda --json "$OUT/bench.json"
step end_to_end 90 "$PY" -m mlp_torch bench --end-to-end --quick --device cuda --json "$OUT/end_to_end.json"

"$PY" - "$OUT/gpu_check.json" "{$STEPS}" <<'EOF'
import json, sys, torch
summary = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "steps": json.loads(sys.argv[2])}
with open(sys.argv[1], "w") as f:
    json.dump(summary, f, indent=2)
EOF
echo "gpu_check.sh: $([ $FAILED -eq 0 ] && echo 'every step passed' || echo 'a step FAILED'); see $LOG" | tee -a "$LOG"
exit $FAILED
