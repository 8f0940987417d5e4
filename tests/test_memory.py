"""memory.py: the estimate of what a model needs, checked against the anonymous RSS the runtime
really adds (KV cache, LUT repack copies), plus the /proc and cgroup readers on fake trees, the
advice when a model does not fit, and the Engine / `lutllm info` wiring.
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import lutllm
from lutllm.arch import model_config
from lutllm.cli import main
from lutllm.gguf_file import GGUFFile
from lutllm.memory import (MemoryAvailable, MemoryFitWarning, available_memory, cgroup_available, estimate_memory,
                           fit_advice, max_ctx_fitting, meminfo_available)

PYTHON_DIR = str(Path(lutllm.__file__).resolve().parent.parent)  # where this lutllm (with _core) lives
MiB = 1 << 20

# Runs in a fresh interpreter so that no earlier allocation of the test process is reused:
# prints the RssAnon growth (bytes) of creating the Model, and of Contexts of each given n_ctx.
_MEASURE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from lutllm import _core
from lutllm.arch import model_config
from lutllm.gguf_file import GGUFFile

def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no RssAnon")

path, lut, n_batch = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
g = GGUFFile(path)
cfg = model_config(g.metadata, g.tensors, path)
descs = [(t.name, t.ggml_type, list(t.shape), t.offset, t.nbytes) for t in g.tensors.values()]
a0 = anon()
m = _core.Model(path, dict(cfg.as_dict(), use_lut=lut), descs, 2)
out = {"model": anon() - a0, "ctx": {}}
for n_ctx in map(int, sys.argv[5:]):
    a = anon()
    c = _core.Context(m, n_ctx, n_batch)
    c.eval(__import__("numpy").arange(1, n_batch + 1, dtype="int32"), 0, False)  # sizes the lazy buffers
    out["ctx"][n_ctx] = anon() - a
    del c
print(json.dumps(out))
"""


def _measure(path, lut, n_batch, *n_ctx):
    if not os.path.exists("/proc/self/status") or "RssAnon" not in open("/proc/self/status").read():
        pytest.skip("needs Linux /proc/self/status RssAnon")
    r = subprocess.run([sys.executable, "-c", _MEASURE, PYTHON_DIR, path, "1" if lut else "0", str(n_batch),
                        *map(str, n_ctx)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["ctx"] = {int(k): v for k, v in out["ctx"].items()}
    return out


def _est(path, n_ctx, n_batch=512, lut=True, n_threads=2):
    g = GGUFFile(path)
    cfg = model_config(g.metadata, g.tensors, path)
    return estimate_memory(g, cfg, n_ctx, n_batch, lut=lut, n_threads=n_threads), cfg


def test_kv_cache_formula(smollm2_path):
    est, cfg = _est(smollm2_path, 1000)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 -> 30 * 3 * 64 * 2 (K, V) * 2 bytes (fp16) per position
    assert (cfg.n_layer, cfg.n_head_kv, cfg.head_dim) == (30, 3, 64)
    assert est.kv_per_token == 30 * 3 * 64 * 2 * 2
    assert est.kv_cache == 1000 * est.kv_per_token


def test_context_estimate_matches_rss(smollm2_path):
    """RSS growth of a Context (KV cache + scratch, after one batch) matches the estimate."""
    n_batch = 64
    got = _measure(smollm2_path, False, n_batch, 512, 4096)
    for n_ctx, grown in got["ctx"].items():
        est, _ = _est(smollm2_path, n_ctx, n_batch, lut=False)
        want = est.kv_cache + est.scratch
        assert abs(grown - want) <= 0.03 * want + 2 * MiB, (n_ctx, grown, want)
    # the part that scales with n_ctx is the KV cache (+ attention scores per thread)
    e1, _ = _est(smollm2_path, 512, n_batch, lut=False)
    e2, _ = _est(smollm2_path, 4096, n_batch, lut=False)
    d_est = (e2.kv_cache + e2.scratch) - (e1.kv_cache + e1.scratch)
    d_got = got["ctx"][4096] - got["ctx"][512]
    assert abs(d_got - d_est) <= 0.02 * d_est, (d_got, d_est)


def test_repack_estimate_matches_rss(smollm2_path):
    """Anonymous RSS added by binding the model with LUT repacking matches the repack estimate; the
    int8 path (no repack) adds next to nothing."""
    est, _ = _est(smollm2_path, 512, lut=True)
    assert est.n_repacked > 0 and est.repack > 0
    got = _measure(smollm2_path, True, 32)
    assert abs(got["model"] - est.repack) <= 0.03 * est.repack + 4 * MiB, (got["model"], est.repack)
    est0, _ = _est(smollm2_path, 512, lut=False)
    assert est0.repack == 0 and est0.n_repacked == 0
    assert est0.weights_mapped_hot == est0.weights_file
    assert _measure(smollm2_path, False, 32)["model"] < 4 * MiB
    # with repacking, the repacked tensors' mapped bytes are no longer read per token
    assert est.weights_mapped_hot < est.weights_file


def test_meminfo_parse(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    1234567 kB\n")
    assert meminfo_available(str(f)) == 1234567 * 1024
    f.write_text("MemTotal: 1 kB\n")
    assert meminfo_available(str(f)) is None
    assert meminfo_available(str(tmp_path / "missing")) is None


def _write(p: Path, text: str):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_cgroup_v1(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/jobs/a1\n1:cpu:/\n0::/\n")
    d = tmp_path / "sys" / "memory" / "jobs" / "a1"
    _write(d / "memory.limit_in_bytes", "1073741824\n")
    _write(d / "memory.usage_in_bytes", "300000000\n")
    _write(d / "memory.stat", "cache 1\ntotal_inactive_file 100000000\n")
    # the parent is unlimited (v1 writes a huge number)
    _write(tmp_path / "sys" / "memory" / "jobs" / "memory.limit_in_bytes", "9223372036854771712\n")
    left, src = cgroup_available(str(proc), str(tmp_path / "sys"))
    assert left == 1073741824 - (300000000 - 100000000)
    assert src.startswith("cgroup v1") and src.endswith("a1")
    # a tighter ancestor wins
    _write(tmp_path / "sys" / "memory" / "jobs" / "memory.limit_in_bytes", "500000000\n")
    _write(tmp_path / "sys" / "memory" / "jobs" / "memory.usage_in_bytes", "400000000\n")
    left, src = cgroup_available(str(proc), str(tmp_path / "sys"))
    assert left == 100000000 and src.endswith("jobs")


def test_cgroup_v2(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice/run-1.scope\n")
    root = tmp_path / "sys"
    _write(root / "cgroup.controllers", "memory cpu\n")
    d = root / "user.slice" / "run-1.scope"
    _write(d / "memory.max", "2147483648\n")
    _write(d / "memory.current", "1000000000\n")
    _write(d / "memory.stat", "anon 5\ninactive_file 200000000\n")
    _write(root / "user.slice" / "memory.max", "max\n")
    left, src = cgroup_available(str(proc), str(root))
    assert left == 2147483648 - 800000000 and src.startswith("cgroup v2")
    # no limit anywhere -> None; a namespaced path that does not exist falls back to the root
    _write(d / "memory.max", "max\n")
    assert cgroup_available(str(proc), str(root)) is None
    proc.write_text("0::/elsewhere\n")
    _write(root / "memory.max", "1000\n")
    _write(root / "memory.current", "400\n")
    assert cgroup_available(str(proc), str(root))[0] == 600


def test_available_memory_real():
    a = available_memory()
    assert a is not None and a.bytes > 0  # Linux always reports MemAvailable


def test_fit_advice(smollm2_path):
    est, _ = _est(smollm2_path, 8192, 512)
    assert fit_advice(est, MemoryAvailable(est.total + 1, "x")) is None
    assert fit_advice(est, None) is None
    budget = est.total - est.kv_cache + est.kv_per_token * 3000  # room for 3000 positions
    msg = fit_advice(est, MemoryAvailable(budget, "MemAvailable"))
    assert msg is not None and "MemAvailable" in msg and "--ctx-size 2816 fits" in msg
    assert "quantization" in msg and "--mem-budget" in msg
    assert max_ctx_fitting(est, budget) == 2816
    fits, _ = _est(smollm2_path, 2816, 512)
    assert fits.total <= budget  # the advised context really fits (attention scores included)
    # less than the anonymous part: loading itself is at risk
    assert "killed" in fit_advice(est, MemoryAvailable(est.anonymous // 2, "cgroup v1 /x"))
    # a memory budget below what is available also counts
    assert "the memory budget" in fit_advice(est, MemoryAvailable(1 << 50, "MemAvailable"), mem_budget=1 << 20)


def test_engine_warns_but_loads(smollm2_path, monkeypatch):
    import lutllm.engine as engine_mod

    monkeypatch.setattr(engine_mod, "available_memory", lambda: MemoryAvailable(8 * MiB, "test limit"))
    with pytest.warns(MemoryFitWarning, match="test limit"):
        eng = engine_mod.Engine(smollm2_path, n_ctx=64)
    assert eng.eval([1, 2, 3]).shape[-1] == eng.n_vocab  # loaded and usable anyway
    got = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a callback replaces the warning
        engine_mod.Engine(smollm2_path, n_ctx=64, memory_warning=got.append)
    assert len(got) == 1 and "Advice" in got[0]
    assert eng.memory_estimate.n_ctx == 64


def test_cli_info_shows_estimate(smollm2_path):
    r = CliRunner().invoke(main, ["info", "-m", smollm2_path, "-c", "1024"])
    assert r.exit_code == 0, r.output
    assert "memory estimate (n_ctx 1024" in r.output
    assert "KV cache" in r.output and "45.0 MiB" not in r.output  # 1024 positions of fp16: 22.5 MiB
    assert "22.5 MiB" in r.output and "available" in r.output and "verdict" in r.output
    r2 = CliRunner().invoke(main, ["info", smollm2_path, "-c", "1024"])  # MODEL as an argument
    def stable(out):  # what is available changes between the two runs
        return [line for line in out.splitlines() if "available" not in line and "verdict" not in line]

    assert r2.exit_code == 0 and stable(r2.output) == stable(r.output)
