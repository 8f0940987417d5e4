"""LUT kernels this machine cannot run natively, checked bit for bit against the scalar twins by
tests/cpp/lut_check.cc: NEON built with aarch64-linux-gnu-g++ and run under qemu-aarch64-static,
and the AVX-512 kernels built on SIMDe's portable AVX-512 (when no AVX-512 CPU is at hand)."""
import os
import shutil
import subprocess

import pytest
from neon_check import run_neon_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["-std=c++17", "-O2", "-ffp-contract=off", "-I", os.path.join(ROOT, "native/include"),
          os.path.join(ROOT, "tests/cpp/lut_check.cc"), os.path.join(ROOT, "native/ref/lut_ref.cc"),
          os.path.join(ROOT, "native/ref/lut_pack.cc")]


def _run(cmd, timeout):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


def _check_output(rc, out):
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc == 0 and last.endswith(" 0 failed"), out[-3000:]
    assert int(last.split()[0]) > 500, last  # the sweep really ran


def test_neon_matches_ref_under_qemu(tmp_path):
    srcs = ["tests/cpp/lut_check.cc", "native/ref/lut_ref.cc", "native/ref/lut_pack.cc", "native/arm/lut_neon.cc"]
    last = run_neon_check(tmp_path, "lut_check_neon", srcs, ["-DLUT_CHECK_ISA=neon", "-DLUT_CHECK_HAS_BUILD"],
                          ["-cpu", "max"])  # -cpu max: dotprod present too
    assert int(last.split()[0]) > 500, last  # the sweep really ran


def test_avx512_matches_ref_on_simde(tmp_path):
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("SIMDe build of the AVX-512 file is checked on x86-64 hosts")
    if not os.path.exists("/usr/include/simde/x86/avx512.h"):
        pytest.skip("needs SIMDe headers (apt: libsimde-dev)")
    cxx = shutil.which("g++") or shutil.which("c++")
    exe = str(tmp_path / "lut_check_avx512")
    src = os.path.join(ROOT, "native/x86/lut_avx512.cc")
    rc, out = _run([cxx, "-DLUT_CHECK_ISA=avx512", "-DLUTLLM_SIMDE_AVX512", "-mavx2", "-mfma", "-mf16c", *COMMON, src,
                    "-o", exe], 180)
    assert rc == 0, out[-3000:]
    rc, out = _run([exe], 60)
    _check_output(rc, out)
