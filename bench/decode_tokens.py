"""Decode time per token, lutllm vs llama-cpp-python, alternating in one run: per-token seconds after
a prompt, summarised as the fastest, the 10th percentile and the median token. On a machine whose
cores are shared with other work the fast tokens are the ones that ran undisturbed, so the low
percentiles estimate quiet-machine speed where the mean (bench/e2e.py) mostly measures the load.

    python bench/decode_tokens.py [-m MODEL] [-t 2] [-p 256] [-n 64] [--rounds 3]
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # e2e.py (the llama-cpp-python venv location)


def lutllm_tokens(model, threads, prompt, decode, n_ctx):
    from lutllm.engine import Engine

    eng = Engine(model, n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx)
    eng.reset()
    eng.eval(prompt)
    hist, out = list(prompt), []
    for tok in decode:
        hist.append(int(tok))
        t0 = time.perf_counter()
        eng.eval(hist)
        out.append(time.perf_counter() - t0)
    return out


def llama_tokens(model, threads, prompt, decode, n_ctx):
    from e2e import run_llama_worker

    return run_llama_worker({"model": model, "threads": threads, "prompt": prompt, "decode": decode, "reps": 1,
                             "n_ctx": n_ctx, "n_batch": n_ctx, "per_token": True})[0]["token_s"]


def summary(ts):
    s = sorted(ts)
    return {"min_ms": 1e3 * s[0], "p10_ms": 1e3 * s[len(s) // 10], "median_ms": 1e3 * statistics.median(s)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from e2e import add_model_args

    add_model_args(ap)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    from lutllm.bench import bench_token_ids
    from lutllm.gguf_file import GGUFFile
    from lutllm.models import resolve_model

    model = str(resolve_model(a.model))
    meta = GGUFFile(model).metadata
    prompt = bench_token_ids(meta, a.n_prompt, 0, 0)
    decode = bench_token_ids(meta, a.n_gen, 0, 1)
    n_ctx = a.n_prompt + a.n_gen + 8
    res = {"lutllm": [], "llama.cpp": []}
    for _ in range(a.rounds):
        res["lutllm"] += lutllm_tokens(model, a.threads, prompt, decode, n_ctx)
        res["llama.cpp"] += llama_tokens(model, a.threads, prompt, decode, n_ctx)
    sums = {k: summary(v) for k, v in res.items()}
    for k, v in sums.items():
        print(json.dumps({"bench": "decode_tokens", "runtime": k, "model": pathlib.Path(model).name,
                          "threads": a.threads, "tokens": len(res[k]), **{x: round(y, 3) for x, y in v.items()}}))
    print(f"\n{'ms/token':12s} {'min':>8s} {'p10':>8s} {'median':>8s}")
    for k, v in sums.items():
        print(f"{k:12s} {v['min_ms']:8.2f} {v['p10_ms']:8.2f} {v['median_ms']:8.2f}")
    r = {x: sums["llama.cpp"][x] / sums["lutllm"][x] for x in sums["lutllm"]}
    print(f"{'speed ratio':12s} {r['min_ms']:7.2f}x {r['p10_ms']:7.2f}x {r['median_ms']:7.2f}x   (lutllm / llama.cpp)")


if __name__ == "__main__":
    main()
