"""ThreadPool under oversubscription: a standalone C++ stress program (tests/cpp/pool_stress.cc) runs
thousands of short parallel_for loops on more threads than cores and checks that each task runs
exactly once per loop, inside its loop, with exclusive thread indices (a worker that wakes late
must not run a task of a later loop or re-run one of an earlier loop)."""
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stress_exe(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if not cxx:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("pool") / "pool_stress"
    subprocess.run([cxx, "-std=c++17", "-O2", "-pthread", f"-I{ROOT / 'runtime'}", str(ROOT / "tests/cpp/pool_stress.cc"),
                    str(ROOT / "runtime/thread_pool.cc"), "-o", str(exe)], check=True)
    return exe


@pytest.mark.parametrize("threads", [2, 2 * (os.cpu_count() or 1) + 1])
def test_every_task_runs_once_per_loop(stress_exe, threads):
    r = subprocess.run([str(stress_exe), str(threads), "20000"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
