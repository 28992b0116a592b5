#!/usr/bin/env bash
# The README's TensorBoard screenshots: four short cat/dog runs, a real TensorBoard server on
# 127.0.0.1, and headless Chromium (Debian: apt install chromium) taking a picture of each view.
#
#   scripts/screenshots.sh [DATA_ROOT]        # DATA_ROOT: CIFAR-10 as JPEG folders (default ../shared/data/cifar10-jpg)
#
# Environment: RUNS (the runs folder; default a new temporary one; runs already there are reused,
# not retrained), OUT (default docs), PYTHON (default .venv/bin/python), CHROMIUM (default chromium).
# Writes OUT/tensorboard-{gradients,images,activations,hparams}.png. About 2 minutes on one core.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT=${1:-../shared/data/cifar10-jpg}
RUNS=${RUNS:-$(mktemp -d)}
OUT=${OUT:-docs}
PYTHON=${PYTHON:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-chromium}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUNS" "$OUT"

train() {
    echo "training: $*"
    "$PYTHON" -m mlp_torch train --dataset folder --data-root "$DATA_ROOT" --classes cat,dog --epochs 4 \
        --runs-dir "$RUNS" --no-progress "$@" > /dev/null
}
DEEP=(--hidden 256 256 256 256 256 256)
if [ -z "$(ls -A "$RUNS")" ]; then
    train                                             # the lecture's 3072-512-2 sigmoid MLP
    train "${DEEP[@]}" --check-grads-every 50         # six sigmoid hidden layers
    train "${DEEP[@]}" --activation relu --lr 0.01    # the same depth with ReLU
    train --model softmax --no-augment-flip --augment-crop 0
fi

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m tensorboard.main --logdir "$RUNS" --host 127.0.0.1 --port "$PORT" --load_fast false \
    --reload_interval 0 > "$RUNS/tensorboard.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2> /dev/null || true' EXIT
"$PYTHON" - "$PORT" "$(ls -d "$RUNS"/*/ | wc -l)" << 'EOF'
import json, sys, time, urllib.request
url, runs = f"http://127.0.0.1:{sys.argv[1]}/data/plugin/scalars/tags", int(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(240):
    try:
        if len(json.loads(opener.open(url, timeout=5).read())) >= runs:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(f"tensorboard did not load the {runs} runs in 2 minutes")
EOF

shot() {  # shot NAME WIDTH,HEIGHT VIEW: a 2x picture of http://127.0.0.1:PORT/#VIEW
    local profile
    profile=$(mktemp -d)
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
        --window-size="$2" --force-device-scale-factor=2 --virtual-time-budget=20000 \
        --screenshot="$OUT/tensorboard-$1.png" "http://127.0.0.1:$PORT/#$3" 2> /dev/null
    rm -rf "$profile"
    # 256 colours are plenty for a page of flat colours and text, and a third of the bytes
    "$PYTHON" -c 'import sys, PIL.Image as I; I.open(sys.argv[1]).convert("RGB").quantize(256).save(sys.argv[1], optimize=True)' \
        "$OUT/tensorboard-$1.png"
    echo "wrote $OUT/tensorboard-$1.png"
}
shot gradients 1400,600 "images&tagFilter=norm_by_layer&regexInput=256x256"
shot images 1400,1100 "images&tagFilter=templates%7Cconfusion%2Ftest&regexInput=mlp512%7Csoftmax"
shot activations 1400,700 "histograms&tagFilter=activations%2Fhidden%5B05%5D&regexInput=sigmoid"
shot hparams 2100,500 "hparams"
echo "runs in $RUNS"
