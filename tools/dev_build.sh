#!/usr/bin/env bash
# Developer build: compiles the extension with CMake into build/${1:-dev} and drops _core.so into
# python/lutllm/ so `PYTHONPATH=python pytest` uses it. Not used by CI (that runs `pip install .`).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="build/${1:-dev}"
cmake -S . -B "$dir" -G Ninja -DLUTLLM_BUILD_PYTHON=ON -DCMAKE_BUILD_TYPE=Release \
  -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$dir" -j2
so=$(ls "$dir"/_core*.so)
cp "$so" "python/lutllm/.$(basename "$so").tmp" && mv "python/lutllm/.$(basename "$so").tmp" "python/lutllm/$(basename "$so")"
echo "built $(basename "$so")"
