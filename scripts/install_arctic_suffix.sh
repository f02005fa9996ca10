#!/usr/bin/env bash
# Benchmark-only peer: arctic-inference's SuffixDecodingCache (Apache-2.0), built from its sdist
# into a separate virtual environment (never a tokenloom requirement). Only the suffix-decoding
# extension (C++ with nanobind) is built; the rest of the package (vLLM plugin, CUDA ops) is not.
#
#   scripts/install_arctic_suffix.sh [VENV]       # default VENV: /work/venvs/arctic
#   VENV/bin/python -m tokenloom bench --methods arctic-16,...   (with PYTHONPATH=python)
set -euo pipefail
VENV=${1:-/work/venvs/arctic}
VERSION=${ARCTIC_VERSION:-0.3.0}
python3 -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install -q "nanobind==2.9.2" cmake ninja wheel setuptools
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the sdist only (its metadata step runs with the tools above, not its full build requirements)
"$VENV/bin/pip" download -q --no-deps --no-binary arctic-inference --no-build-isolation \
    "arctic-inference==$VERSION" -d "$WORK"
SDIST=$(ls "$WORK"/arctic_inference-*.tar.gz | head -1)
tar xzf "$SDIST" -C "$WORK"
SRC=$(ls -d "$WORK"/arctic_inference-*/ | head -1)
"$VENV/bin/cmake" -S "$SRC/csrc/suffix_decoding" -B "$WORK/build" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" -DCMAKE_BUILD_TYPE=Release \
    -DPython_EXECUTABLE="$VENV/bin/python" -DCMAKE_PREFIX_PATH="$("$VENV/bin/python" -m nanobind --cmake_dir)"
"$VENV/bin/cmake" --build "$WORK/build" -j 2
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
mkdir -p "$SITE/arctic_inference/suffix_decoding"
cp "$SRC/arctic_inference/__init__.py" "$SRC/LICENSE" "$SITE/arctic_inference/"
cp "$SRC"/arctic_inference/suffix_decoding/*.py "$SITE/arctic_inference/suffix_decoding/"
cp "$WORK"/build/_C*.so "$SITE/arctic_inference/suffix_decoding/"
"$VENV/bin/python" -c "from arctic_inference.suffix_decoding import SuffixDecodingCache; print('arctic suffix decoding OK')"
