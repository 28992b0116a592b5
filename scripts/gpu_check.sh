#!/usr/bin/env bash
# scripts/gpu_check.sh DIR: everything that needs a CUDA GPU, on a bare machine, in under 8 minutes.
#
# Runs from a checkout with the torch already installed there (PYTHONPATH=., nothing installed, no
# network): the CUDA-parametrised tests (when pytest is there; a test module that needs a package the
# machine lacks, such as optuna, is left out), four epochs of each backend on CUDA (synthetic data),
# eagerly (--no-cuda-graphs) and replayed from a CUDA graph (the default on CUDA), their steps/s side
# by side in cuda_graphs.json, `mlp-torch bench --json` and `bench --end-to-end --quick` on CUDA (the
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
wanted = ("torchvision", "tensorboard", "matplotlib", "optuna", "numpy", "PIL", "tqdm", "pytest", "hypothesis")
missing = [m for m in wanted if importlib.util.find_spec(m) is None]
print("missing modules:", ", ".join(missing) or "none")
EOF

if "$PY" -c 'import pytest' 2>/dev/null; then
    # a test module that imports a package this machine lacks (optuna, say: a bare CUDA image has
    # torch but not our every dependency) would stop the collection; none of them has CUDA tests
    IGNORE=()
    for module in optuna; do
        if ! "$PY" -c "import $module" 2>/dev/null; then
            for f in $(grep -lE "^(import|from) $module( |\.|$)" tests/*.py); do
                echo "=== cuda_tests: $f left out, $module is not installed" | tee -a "$LOG"
                IGNORE+=("--ignore=$f")
            done
        fi
    done
    step cuda_tests 140 "$PY" -m pytest -q -p no:cacheprovider --durations=5 "${IGNORE[@]}" -k cuda tests
else
    echo "=== cuda_tests: skipped, pytest is not installed" | tee -a "$LOG"
fi
# each backend eagerly (--no-cuda-graphs) and replayed from a CUDA graph (the default on CUDA), the
# same job: steps/s of both from the epochs after the first (which holds the capture), and whether
# the two trained alike (cuda_graphs.json)
for backend in builtin custom manual; do
    step "train_$backend" 30 "$PY" -m mlp_torch train --dataset synthetic --device cuda --epochs 4 \
        --backend "$backend" --no-cuda-graphs --runs-dir "$OUT/runs" --name "gpu-check-$backend" --no-progress
    step "train_${backend}_cuda_graphs" 30 "$PY" -m mlp_torch train --dataset synthetic --device cuda --epochs 4 \
        --backend "$backend" --runs-dir "$OUT/runs" --name "gpu-check-$backend-cuda-graphs" --no-progress
done
step cuda_graphs_vs_eager 10 "$PY" - "$OUT/runs" "$OUT/cuda_graphs.json" <<'EOF'
import json, statistics, sys
from pathlib import Path


def latest(name: str) -> Path:
    return sorted(Path(sys.argv[1]).glob(f"{name}_2*"))[-1]  # the latest run of that name


summary = {}
for backend in ("builtin", "custom", "manual"):
    runs = {}
    for graphs, name in ((False, f"gpu-check-{backend}"), (True, f"gpu-check-{backend}-cuda-graphs")):
        run = latest(name)
        history = json.loads((run / "metrics.json").read_text())["history"]
        info = json.loads((run / "config.json").read_text())
        steps = -(-sum(info["data"]["counts"]["train"].values()) // info["config"]["batch_size"])
        ends = [0.0] + [h["seconds"] for h in history]  # training seconds, cumulative
        epochs = [b - a for a, b in zip(ends, ends[1:])][1:]  # the first epoch holds the warm-up and capture
        seconds = statistics.median(epochs)
        runs["cuda_graphs" if graphs else "eager"] = {
            "epoch_seconds": seconds,
            "epoch_seconds_min": min(epochs),
            "steps_per_second": steps / seconds,
            "first_epoch_seconds": ends[1],
            "train_loss": history[-1]["train_loss"],
            "val_loss": history[-1]["val_loss"],
        }
    eager, graphed = runs["eager"], runs["cuda_graphs"]
    runs["speedup"] = eager["epoch_seconds"] / graphed["epoch_seconds"]
    runs["same_losses"] = all(eager[k] == graphed[k] for k in ("train_loss", "val_loss"))
    summary[backend] = runs
    print(
        f"{backend:8s} eager {eager['steps_per_second']:6.0f} steps/s, cuda graphs {graphed['steps_per_second']:6.0f} "
        f"steps/s ({runs['speedup']:.2f}x; median of epochs 2-4); losses bit-equal: {runs['same_losses']}"
    )
Path(sys.argv[2]).write_text(json.dumps(summary, indent=2))
EOF
step bench 50 "$PY" -m mlp_torch bench --quick --device cuda --json "$OUT/bench.json"
step end_to_end 70 "$PY" -m mlp_torch bench --end-to-end --quick --device cuda --json "$OUT/end_to_end.json"

"$PY" - "$OUT/gpu_check.json" "{$STEPS}" <<'EOF'
import json, sys, torch
summary = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "steps": json.loads(sys.argv[2])}
with open(sys.argv[1], "w") as f:
    json.dump(summary, f, indent=2)
EOF
echo "gpu_check.sh: $([ $FAILED -eq 0 ] && echo 'every step passed' || echo 'a step FAILED'); see $LOG" | tee -a "$LOG"
exit $FAILED
