#!/usr/bin/env bash
# Builds the comparison runtime (llama-cpp-python, compiled from source, ~10 min on 2 cores) into a
# venv outside the repo. Benchmarks and golden-data tools use it; lutllm never depends on it.
set -euo pipefail
VENV="${LUTLLM_LLAMA_VENV:-$HOME/.cache/lutllm-bench/llama-venv}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "$VENV ready"; exit 0
fi
python3 -m venv "$VENV"
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/pip" install --no-cache-dir "llama-cpp-python==0.3.36" numpy
echo "$VENV ready"
