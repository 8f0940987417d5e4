"""Timing worker run inside the llama-cpp-python venv by bench scripts (not importable by lutllm).

Reads one JSON job from argv, prints one JSON result line: prefill and decode seconds.
"""
import json
import sys
import time

from llama_cpp import Llama

job = json.loads(sys.argv[1])
llm = Llama(model_path=job["model"], n_ctx=job["n_ctx"], n_batch=job["n_batch"], n_threads=job["threads"],
            n_threads_batch=job["threads"], verbose=False)
out = []
for _ in range(job["reps"]):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(job["prompt"])
    t1 = time.perf_counter()
    per_token = []
    for tok in job["decode"]:
        ta = time.perf_counter()
        llm.eval([tok])
        per_token.append(time.perf_counter() - ta)
    t2 = time.perf_counter()
    rec = {"prefill_s": t1 - t0, "decode_s": t2 - t1}
    if job.get("per_token"):
        rec["token_s"] = per_token
    out.append(rec)
print(json.dumps(out))
