#!/usr/bin/env bash
# The device check: is tokenloom exact and fast on this device? Greedy identity of every method
# against HF greedy, a two-token chi-square of every lossless method, ByteLM against its oracle,
# tokens/s against HF greedy and prompt lookup, the tree-step cost curve and peak memory, on the
# embedded model and a tiny random Llama. Writes a JSON report and a Markdown table; exits 1 on
# any mismatch, 2 when the device is absent (python/tokenloom/eval/devicecheck.py).
#
#   scripts/device_check.sh                          # cuda when available, else cpu
#   scripts/device_check.sh --device cpu             # small settings, about 2 minutes on 2 cores
#   scripts/device_check.sh --device cuda --out cuda.json
#   TOKENLOOM_FORCE_ACCELERATOR_PATH=1 scripts/device_check.sh --device cpu   # accelerator branches
#
# Needs the hf and test extras (torch, transformers, scipy). Runs this checkout's python/ folder
# when the extension is built into it (maturin develop), else the installed tokenloom.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
if compgen -G "$ROOT/python/tokenloom/_core*.so" > /dev/null; then
    export PYTHONPATH="$ROOT/python${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" -m tokenloom.eval.devicecheck "$@"
