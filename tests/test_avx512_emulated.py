"""Every AVX-512 kernel in native/kernels.inc, bit-exact against its REF twin on machines without AVX-512:
builds tests/emu/avx512_emu_check.cc with the unmodified native/x86/*_avx512.cc on SIMDe (baseline ISA)
and reads its JSON lines. Not a speed test; where the CPU has AVX-512 the native kernel tests run as well."""
import glob
import json
import os
import platform
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "emu")
FLAGS = ["-std=c++17", "-O1", "-ffp-contract=off", "-w", "-I", os.path.join(EMU, "shim"),
         "-I", os.path.join(ROOT, "native", "include")]

# Divergences found by this check and not yet fixed in the kernels: (kernel, input group) -> why.
# The matching test below is xfail(strict): once fixed it XPASSes and fails, so the entry gets removed.
KNOWN: dict = {}  # (the subnormal-scale quantize_act bug it once held is fixed: id = 0 when d < FLT_MIN)


def _simde_include_dir():
    dirs = ["/usr/include", "/usr/local/include"] + [d for d in os.environ.get("CPATH", "").split(":") if d]
    for d in dirs:
        if os.path.exists(os.path.join(d, "simde", "x86", "avx512.h")):
            return d
    return None


def _registered_avx512():
    """Names registered with ISA AVX512 in kernels.inc (the driver finds them through the X-macros)."""
    with open(os.path.join(ROOT, "native", "kernels.inc")) as f:
        text = f.read()
    return set(re.findall(r"^LUTLLM_\w+\((?:[^,()]*,\s*)?(\w+),\s*AVX512\)", text, re.M))


@pytest.fixture(scope="module")
def emu_report(tmp_path_factory):
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the x86 kernels of kernels.inc are registered only for x86-64 builds")
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        pytest.skip("needs a host C++ compiler (g++)")
    if not _simde_include_dir():
        pytest.skip("needs SIMDe headers (apt: libsimde-dev) to emulate AVX-512")
    out = tmp_path_factory.mktemp("avx512_emu")
    srcs = ([os.path.join(EMU, "avx512_emu_check.cc")] + sorted(glob.glob(os.path.join(ROOT, "native", "ref", "*.cc")))
            + sorted(glob.glob(os.path.join(ROOT, "native", "x86", "*_avx512.cc"))))
    objs = [str(out / (os.path.basename(s) + ".o")) for s in srcs]

    def compile_one(pair):
        src, obj = pair
        p = subprocess.run([cxx, *FLAGS, "-c", src, "-o", obj], capture_output=True, text=True, timeout=240)
        return src, p.returncode, p.stdout + p.stderr

    # slowest first (the SIMDe-heavy AVX-512 files), two at a time
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(compile_one, sorted(zip(srcs, objs), key=lambda p: "_avx512" not in p[0])))
    for src, rc, log in results:
        assert rc == 0, (f"compiling {os.path.relpath(src, ROOT)} on SIMDe failed (an intrinsic SIMDe lacks or gets "
                         f"wrong belongs in tests/emu/shim/immintrin.h):\n{log[-4000:]}")
    exe = str(out / "avx512_emu_check")
    p = subprocess.run([cxx, *objs, "-o", exe], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"linking the AVX-512 emulation check failed:\n{(p.stdout + p.stderr)[-4000:]}"
    p = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines and "summary" in lines[-1], f"driver exited {p.returncode} without a summary:\n{p.stdout[-3000:]}{p.stderr[-3000:]}"
    kernels = {ln["kernel"]: ln for ln in lines[:-1]}
    return {"summary": lines[-1]["summary"], "kernels": kernels, "rc": p.returncode}


def test_every_registered_avx512_kernel_is_checked(emu_report):
    s = emu_report["summary"]
    assert s["isa"] == "AVX512"
    assert not s["uncovered"], s["uncovered"]
    assert set(emu_report["kernels"]) == _registered_avx512()
    for name, k in emu_report["kernels"].items():
        assert k["ref"].endswith("__ref"), (name, k["ref"])
        assert k["cases"] >= 50, (name, k["cases"])


def test_avx512_kernels_bit_exact_with_ref(emu_report):
    bad = []
    for name, k in sorted(emu_report["kernels"].items()):
        unknown = {g: n for g, n in k["failed_by_group"].items() if (name, g) not in KNOWN}
        if unknown:
            bad.append(f"{name} vs {k['ref']}: {k['failed']}/{k['cases']} cases differ {unknown}; e.g.\n  "
                       + "\n  ".join(k["failures"]))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("kernel,group", sorted(KNOWN))
def test_known_divergence_still_present(emu_report, kernel, group):
    n = emu_report["kernels"].get(kernel, {}).get("failed_by_group", {}).get(group, 0)
    if n:
        pytest.xfail(f"{kernel}, {group} inputs ({n} cases): {KNOWN[(kernel, group)]}")
    pytest.fail(f"{kernel} no longer diverges on '{group}' inputs: remove its KNOWN entry in this file")
