"""Test helper: builds a tests/cpp checker (scalar twin against a NEON kernel) with
aarch64-linux-gnu-g++ and runs it under qemu-aarch64-static; skips when either is missing. The
checkers print "<cases> checked <failures> failed" last; that line is returned once it says 0 failed."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_neon_check(tmp_path, name, sources, defines=(), qemu_args=()):
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64-static")
    if not cxx or not qemu:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64-static (apt: g++-aarch64-linux-gnu qemu-user-static)")
    exe = str(tmp_path / name)
    cmd = [cxx, "-static", "-std=c++17", "-O2", "-ffp-contract=off", "-I", os.path.join(ROOT, "native/include"),
           *defines, *(os.path.join(ROOT, s) for s in sources), "-o", exe]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run([qemu, *qemu_args, exe], capture_output=True, text=True, timeout=60)
    out = p.stdout + p.stderr
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert p.returncode == 0 and last.endswith(" 0 failed"), out[-3000:]
    return last
