"""The whole aarch64 build end to end: native kernels, runtime and C API cross-compiled with the
flags CMakeLists.txt gives them, run under qemu-aarch64 on real models: the default SmolLM2-135M
Q4_1 (NEON LUT kernels for its Q4_1 layers, the NEON / sdot int8 path for its Q8_0 head) and
Gemma-3-270M (Q8_0, Q5_0, Q6_K on the int8 path, Q4_K as the compact k-quant LUT layout,
sliding-window layers).

* LUTLLM_ISA=ref, neon and dotprod give the same logits bit for bit (every kernel is a bit-exact twin
  of its scalar reference), so each dispatched kernel is wired to the op it claims;
* and the same bits as the x86-64 build running here (no fma contraction in either build), with
  the same greedy tokens.
"""
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lutllm.engine import Engine

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"
N_GEN = 4


def _compile(cxx, src, obj, flags):
    p = subprocess.run([cxx, "-std=c++17", "-O2", "-ffp-contract=off", *flags, "-c", str(src), "-o", str(obj)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{src}:\n{p.stderr[-3000:]}"
    return obj


@pytest.fixture(scope="module")
def arm_e2e(tmp_path_factory):
    cxx, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64-static")
    if not cxx or not qemu:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64-static (apt: g++-aarch64-linux-gnu qemu-user-static)")
    out = tmp_path_factory.mktemp("arm_e2e")
    inc = ["-I", str(ROOT / "native/include"), "-I", str(ROOT / "runtime"), "-I", str(ROOT / "runtime/include")]
    jobs = [(s, []) for s in [ROOT / "native/dispatch.cc", *sorted((ROOT / "native/ref").glob("*.cc")),
                              *sorted((ROOT / "native/arm").glob("*_neon.cc")), *sorted((ROOT / "runtime").glob("*.cc")),
                              ROOT / "tests/cpp/arm_e2e.cc"]]
    jobs += [(s, ["-march=armv8.2-a+dotprod"]) for s in sorted((ROOT / "native/arm").glob("*_dotprod.cc"))]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        objs = list(ex.map(lambda j: _compile(cxx, j[0], out / f"{j[0].parent.name}_{j[0].stem}.o", inc + j[1]), jobs))
    exe = out / "arm_e2e"
    p = subprocess.run([cxx, "-static", "-pthread", *map(str, objs), "-o", str(exe)], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return qemu, exe


def _run(arm_e2e, model, tokens, isa):
    qemu, exe = arm_e2e
    p = subprocess.run([qemu, str(exe), model, str(N_GEN), *map(str, tokens)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "LUTLLM_ISA": isa})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    gen = [int(t) for t in lines[0].split()[1:]]
    logits = np.array([int(h, 16) for h in lines[1].split()[1:]], dtype=np.uint32)
    return gen, logits


@pytest.mark.parametrize("model_fixture", ["smollm2_path", "gemma3_path"])
def test_aarch64_build_matches_across_isas_and_x86(arm_e2e, model_fixture, request):
    path = request.getfixturevalue(model_fixture)
    eng = Engine(path, n_ctx=64, n_threads=2)
    prompt = eng.tokenizer.encode(PROMPT)
    runs = {isa: _run(arm_e2e, path, prompt, isa) for isa in ("ref", "neon", "dotprod")}
    gen, logits = runs["ref"]
    assert len(gen) == N_GEN and logits.size == eng.config.n_vocab
    for isa in ("neon", "dotprod"):
        assert runs[isa][0] == gen, isa
        assert np.array_equal(runs[isa][1], logits), f"{isa}: logits differ from the scalar kernels'"
    # x86-64, this build: greedy tokens and the last position's logits
    seq, x86_gen = list(prompt), []
    for _ in range(N_GEN):
        t = int(np.argmax(eng.eval(seq)))
        x86_gen.append(t)
        seq.append(t)
    assert x86_gen == gen
    x86_logits = np.ascontiguousarray(eng.eval(seq), dtype=np.float32).reshape(-1).view(np.uint32)
    assert np.array_equal(x86_logits, logits), "aarch64 and x86-64 logits differ"
    if model_fixture == "smollm2_path":  # the instruct model answers; Gemma 270M is a base model
        assert "Paris" in eng.tokenizer.decode(gen)
