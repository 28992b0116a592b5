#!/usr/bin/env bash
# The README's "2-D problems" pictures in docs/, made by the project's own commands:
#   scripts/twod_pictures.sh            (about a minute on one CPU core)
# Each run's decision_boundary.png is copied to docs/<name>.png and its test accuracy printed; the
# runs themselves go to a temporary folder, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
export OMP_NUM_THREADS=1
mkdir -p docs

picture() {  # picture NAME TRAIN-FLAGS...: train, copy the run's decision_boundary.png to docs/NAME.png
    local name=$1
    shift
    "$bin/mlp-torch" train "$@" --runs-dir "$runs/$name" --no-progress >/dev/null
    cp "$runs/$name"/*/decision_boundary.png "docs/$name.png"
    "$bin/python" -c 'import json, sys; print("%s: test accuracy %.3f" % (sys.argv[2], json.load(open(sys.argv[1]))["test_accuracy"]))' \
        "$runs/$name"/*/metrics.json "docs/$name.png"
}

picture xor-perceptron --dataset xor --model perceptron --epochs 50
picture xor-mlp --dataset xor --hidden 8 --activation tanh --epochs 100
picture xor-sigmoid-output --dataset xor --output sigmoid --hidden 8 --activation tanh --epochs 100
picture spiral-softmax --dataset spiral --model softmax --epochs 100
picture spiral-mlp --dataset spiral --hidden 100 --activation relu --epochs 200
"$bin/python" scripts/boundary_strip.py --at 1,5,15,100 --out docs/circles-evolution.png -- \
    --dataset circles --hidden 8 --activation tanh --epochs 100 --runs-dir "$runs/circles" --no-progress >/dev/null
echo "docs/circles-evolution.png"
"$bin/mlp-torch" plot activations --out docs/activations.png
