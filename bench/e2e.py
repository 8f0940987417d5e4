"""End-to-end speed: prefill tokens/s and decode tokens/s of lutllm vs llama-cpp-python on the same
GGUF, thread count and token ids, measured alternately in one run. Prints JSON lines + a table.
Decode here continues after the prompt (`lutllm bench`'s tg starts from an empty context); the
timing code and the token ids are lutllm.bench's.
Decode of a model larger than the last-level cache streams its weights once per token, so beside
tok/s the table prints the weight bytes each runtime reads per token, the read rate that implies
and that rate as a share of the machine's DRAM read bandwidth (bench/membw.c, same thread count,
measured in the same run): the ceiling any speed-up at equal bytes has to fit under.

    python bench/e2e.py [-m MODEL] [-t 2] [-p 256] [-n 64] [--reps 3]
The llama-cpp-python venv comes from bench/setup_llama_venv.sh (outside the repo).
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # kernels.py (the DRAM read probe)
LLAMA_PY = os.environ.get("LUTLLM_LLAMA_VENV", str(pathlib.Path.home() / ".cache/lutllm-bench/llama-venv")) + "/bin/python"


def run_lutllm(model, threads, prompt, decode, reps, n_ctx, lut=True):
    from lutllm.bench import time_decode, time_prefill
    from lutllm.engine import Engine

    eng = Engine(model, n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx, lut=lut)
    out = []
    for _ in range(reps):
        pre = time_prefill(eng, prompt)
        dec = time_decode(eng, decode, prefix=prompt)
        out.append({"prefill_s": pre, "decode_s": dec})
    return out


def run_llama_worker(job):
    """Run bench/_llama_worker.py with `job` in the llama-cpp-python venv; its last JSON line."""
    r = subprocess.run([LLAMA_PY, str(HERE / "_llama_worker.py"), json.dumps(job)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-cpp-python worker failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_llama(model, threads, prompt, decode, reps, n_ctx):
    return run_llama_worker({"model": model, "threads": threads, "prompt": prompt, "decode": decode, "reps": reps,
                             "n_ctx": n_ctx, "n_batch": n_ctx})


def weight_bytes_per_token(path, lut):
    """Weight bytes a decode step reads: lutllm (lut=True) reads its LUT copies plus the tensors it
    uses in place; llama.cpp (lut=False: every tensor in its file format) reads every tensor but an
    untied token embedding, of which it reads one row."""
    from lutllm.arch import model_config
    from lutllm.gguf_file import GGUFFile
    from lutllm.memory import estimate_memory

    g = GGUFFile(path)
    est = estimate_memory(g, model_config(g.metadata, g.tensors, path), 64, 1, lut=lut)
    return est.weights_mapped_hot + est.repack


def add_model_args(ap):
    """The options every end-to-end script shares: model, threads, prompt and generated tokens."""
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-p", "--n-prompt", type=int, default=256)
    ap.add_argument("-n", "--n-gen", type=int, default=64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternations lutllm/llama.cpp")
    ap.add_argument("--no-llama", action="store_true")
    ap.add_argument("--no-probe", action="store_true", help="skip the DRAM read-bandwidth probe")
    ap.add_argument("--int8", action="store_true", help="also time lutllm's int8 path (Engine(lut=False))")
    ap.add_argument("--llama-model", action="append", default=[],
                    help="time llama.cpp on this GGUF instead of -m (repeatable: e.g. its Q2_K and TQ2_0 of the "
                         "model lutllm runs at 2 bits); same token ids")
    a = ap.parse_args()
    from lutllm.bench import bench_token_ids
    from lutllm.gguf_file import GGUFFile
    from lutllm.models import resolve_model
    from kernels import dram_read_gbps

    model = str(resolve_model(a.model))
    meta = GGUFFile(model).metadata
    prompt = bench_token_ids(meta, a.n_prompt, 0, 0)  # the ids `lutllm bench` uses (pp and tg tests)
    decode = bench_token_ids(meta, a.n_gen, 0, 1)
    n_ctx = a.n_prompt + a.n_gen + 8
    runners = {"lutllm": run_lutllm}
    bytes_tok = {"lutllm": weight_bytes_per_token(model, True)}
    if a.int8:
        runners["lutllm-int8"] = lambda *args: run_lutllm(*args, lut=False)
        bytes_tok["lutllm-int8"] = weight_bytes_per_token(model, False)
    if not a.no_llama:
        if not os.path.exists(LLAMA_PY):
            raise SystemExit(f"{LLAMA_PY} missing: run bench/setup_llama_venv.sh (or pass --no-llama)")
        if a.llama_model:
            for other in a.llama_model:
                p = str(resolve_model(other))
                runners["llama.cpp:" + pathlib.Path(p).name] = lambda _m, *args, p=p: run_llama(p, *args)
                bytes_tok["llama.cpp:" + pathlib.Path(p).name] = weight_bytes_per_token(p, False)
        else:
            runners["llama.cpp"] = run_llama
            bytes_tok["llama.cpp"] = weight_bytes_per_token(model, False)
    res = {k: [] for k in runners}
    for _ in range(a.rounds):
        for name, fn in runners.items():
            for r in fn(model, a.threads, prompt, decode, a.reps, n_ctx):
                pp, tg = a.n_prompt / r["prefill_s"], a.n_gen / r["decode_s"]
                res[name].append((pp, tg))
                print(json.dumps({"bench": "e2e", "runtime": name, "model": pathlib.Path(model).name,
                                  "threads": a.threads, "pp_tokens": a.n_prompt, "tg_tokens": a.n_gen,
                                  "pp_tps": round(pp, 2), "tg_tps": round(tg, 2)}), flush=True)
    probe = None if a.no_probe else dram_read_gbps(a.threads)
    if probe:
        print(json.dumps(probe), flush=True)
    w = max(12, *(len(k) for k in res))
    print(f"\n{'runtime':{w}s} {'pp' + str(a.n_prompt) + ' tok/s':>14s} {'tg' + str(a.n_gen) + ' tok/s':>14s}"
          f" {'MB/token':>9s} {'tg GB/s':>8s} {'of probe':>9s}")
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in res.items()}
    for k, (pp, tg) in med.items():
        gbps = bytes_tok[k] * tg / 1e9
        share = f"{100 * gbps / probe['gbps']:8.0f}%" if probe else f"{'-':>9s}"
        print(f"{k:{w}s} {pp:14.1f} {tg:14.1f} {bytes_tok[k] / 1e6:9.0f} {gbps:8.1f} {share}")
        print(json.dumps({"bench": "e2e_bandwidth", "runtime": k, "weight_bytes_per_token": bytes_tok[k],
                          "tg_gbps": round(gbps, 2), "probe_gbps": probe["gbps"] if probe else None}))
    if probe:
        print(f"{'probe':{w}s} {'':14s} {'':14s} {'':9s} {probe['gbps']:8.1f}  (bench/membw.c, {a.threads} threads)")
    for k in med:
        if not k.startswith("llama.cpp"):
            continue
        rp, rt = med["lutllm"][0] / med[k][0], med["lutllm"][1] / med[k][1]
        print(f"{'ratio':{w}s} {rp:14.2f}x {rt:13.2f}x   (lutllm / {k}, medians)")
        print(json.dumps({"bench": "e2e_ratio", "model": pathlib.Path(model).name, "against": k,
                          "threads": a.threads, "pp_ratio": round(rp, 3), "tg_ratio": round(rt, 3)}))


if __name__ == "__main__":
    main()
