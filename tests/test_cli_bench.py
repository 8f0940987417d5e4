"""`lutllm bench` (llama-bench-like pp/tg speed): JSON and table shapes, numbers that agree with
each other and with the file (read by the independent `gguf` package), the fixed benchmark token
ids, bad options, and bench/e2e.py running on the shared timing code. No speed is asserted.
"""
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

import lutllm
from lutllm import _core
from lutllm.bench import bench_token_ids
from lutllm.cli import main
from lutllm.gguf_file import GGUFFile
from lutllm.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_json(smollm2_path):
    r = CliRunner().invoke(main, ["bench", "-m", smollm2_path, "-p", "16", "-n", "4", "-r", "2", "-t", "1",
                                  "--json"])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.output.splitlines() if line.strip()]


def test_json_shape_and_consistency(bench_json, smollm2_path):
    pp, tg = bench_json
    assert (pp["test"], pp["n_prompt"], pp["n_gen"]) == ("pp16", 16, 0)
    assert (tg["test"], tg["n_prompt"], tg["n_gen"]) == ("tg4", 0, 4)
    reader = gguf.GGUFReader(smollm2_path)
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    mix = {}
    for t in reader.tensors:
        mix[t.tensor_type.name] = mix.get(t.tensor_type.name, 0) + 1
    for rec in (pp, tg):
        assert rec["model"] == smollm2_path
        assert rec["model_size"] == os.path.getsize(smollm2_path)
        assert rec["n_params"] == n_params
        assert rec["type_mix"] == mix
        assert rec["isa"] in _core.available_isas() and rec["weights"] == "lut"
        assert rec["threads"] == 1 and rec["reps"] == 2
        assert rec["lutllm_version"] == lutllm.__version__
        n = rec["n_prompt"] + rec["n_gen"]
        assert len(rec["samples_s"]) == len(rec["samples_ts"]) == 2
        for s, ts in zip(rec["samples_s"], rec["samples_ts"]):
            assert s > 0 and ts > 0
            assert ts * s == pytest.approx(n, rel=1e-3)  # tokens/s x seconds = tokens
        assert rec["mean_ts"] == pytest.approx(statistics.fmean(rec["samples_ts"]), rel=1e-3)
        assert rec["std_ts"] == pytest.approx(statistics.stdev(rec["samples_ts"]), rel=1e-3, abs=1e-3)
        assert min(rec["samples_ts"]) - 1e-3 <= rec["mean_ts"] <= max(rec["samples_ts"]) + 1e-3


def test_table(smollm2_path):
    r = CliRunner().invoke(main, ["bench", "-m", smollm2_path, "-p", "8", "-n", "2", "-r", "1", "-t", "1",
                                  "--no-warmup", "--int8"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("|")]
    assert lines[0].split("|")[1:-1] == [" model ", " size ", " params ", " backend ", " threads ", " test ", " t/s "]
    assert len(lines) == 4  # header, alignment row, pp8, tg2
    for line, test in zip(lines[2:], ("pp8", "tg2")):
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert len(cells) == 7
        assert cells[0].startswith("llama ") and cells[0].endswith("Q4_1")
        assert cells[1].endswith("MiB") and "int8" in cells[3] and cells[4] == "1" and cells[5] == test
        mean, std = cells[6].split(" ± ")
        assert float(mean) > 0 and math.isfinite(float(std))


def test_bench_token_ids(smollm2_path):
    meta = GGUFFile(smollm2_path).metadata
    a = bench_token_ids(meta, 200, 0, 0)
    assert a == bench_token_ids(meta, 200, 0, 0)  # deterministic
    assert a != bench_token_ids(meta, 200, 0, 1)  # prompt and decode streams differ
    assert a[:50] == bench_token_ids(meta, 50, 0, 0)  # a prefix of a longer run
    types = np.asarray(meta["tokenizer.ggml.token_type"])
    assert all(types[t] == 1 for t in a)  # ordinary text tokens only
    tok = Tokenizer.from_metadata(meta)
    assert not set(a) & (set(tok.eog_ids) | {tok.bos_id})
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        bench_token_ids({}, 3)


@pytest.mark.parametrize("args, what", [
    (["-p", "0"], "'-p' / '--n-prompt'"),
    (["-n", "0"], "'-n' / '--n-gen'"),
    (["-t", "0"], "'-t' / '--threads'"),
    (["-r", "0"], "'-r' / '--repetitions'"),
    (["-p", "many"], "'-p' / '--n-prompt'"),
])
def test_bad_options(smollm2_path, args, what):
    r = CliRunner().invoke(main, ["bench", "-m", smollm2_path, *args])
    assert r.exit_code == 2 and what in r.output and "Invalid value" in r.output, r.output


def test_missing_model(tmp_path):
    missing = tmp_path / "nope.gguf"
    r = CliRunner().invoke(main, ["bench", "-m", str(missing), "-p", "4", "-n", "1"])
    assert r.exit_code == 1 and "Error:" in r.output and "nope.gguf" in r.output and "not a file" in r.output
    assert "Traceback" not in r.output


def test_e2e_script_uses_shared_core(smollm2_path):
    # the subprocess imports the lutllm this test process uses (a source tree or an installed one)
    env = dict(os.environ, PYTHONPATH=str(Path(lutllm.__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "e2e.py"), "-m", smollm2_path, "-t", "1", "-p", "8",
                        "-n", "2", "--reps", "1", "--rounds", "1", "--no-llama"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.splitlines()[0])
    assert rec["runtime"] == "lutllm" and rec["pp_tokens"] == 8 and rec["tg_tokens"] == 2
    assert rec["pp_tps"] > 0 and rec["tg_tps"] > 0

