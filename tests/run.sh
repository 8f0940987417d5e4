#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the build and the tests need (the aarch64
# cross compiler, qemu-user and SIMDe from Debian when missing and we may use apt; lutllm with its test
# extras via pip), then runs pytest. The README's second command and .ci/run both call this.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || need_apt+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null 2>&1 || command -v qemu-aarch64 >/dev/null 2>&1 || need_apt+=(qemu-user-static)
[ -f /usr/include/simde/x86/avx512.h ] || need_apt+=(libsimde-dev)  # AVX-512 kernels emulated (tests/emu)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${need_apt[*]} (for the aarch64 and emulated AVX-512 kernel tests)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null \
      || echo "warning: could not install ${need_apt[*]}; the aarch64 / emulated AVX-512 tests will be skipped"
  else
    echo "note: ${need_apt[*]} missing and apt not usable; the aarch64 / emulated AVX-512 tests will be skipped"
  fi
fi

python3 -m pip install --quiet --disable-pip-version-check ".[test]"
# Run from outside the source tree so the installed package (with its compiled _core) is tested.
exec python3 -m pytest -m "not slow" "$@"
