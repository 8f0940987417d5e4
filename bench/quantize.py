"""Quantizer benchmark: `lutllm quantize` time, NMSE of the linear weights and perplexity per bit
width, group and method. A script, not a test.

    PYTHONPATH=python python3 bench/quantize.py [-m MODEL] [--bits 4,3,2,ternary] [--groups 32,64,128]
        [--methods rtn,mse] [--recipes uniform,mix] [--scales fp16,kq] [--chars 12000] [--ctx 256] [--no-ppl]
        [-t THREADS]

--scales kq (k-quant sub-scales) runs once per bit width 2..4 (its group follows from the bits; other
bit widths are skipped) instead of once per --groups entry.

Perplexity uses the first --chars characters of tests/data/ppl_text.txt in chunks of --ctx tokens
(llama-perplexity's method, engine.py); the source model's figure is printed first. Output: one
JSON object per line.
"""
import argparse
import json
import pathlib
import tempfile
import time

from lutllm.engine import Engine
from lutllm.models import resolve_model
from lutllm.quantize import KQ_GROUPS, quantize_model

TEXT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "ppl_text.txt"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("--bits", default="4,3,2,ternary")
    ap.add_argument("--groups", default="32,64,128")
    ap.add_argument("--methods", default="rtn,mse")
    ap.add_argument("--recipes", default="uniform", help="uniform and/or mix (quantize --mix)")
    ap.add_argument("--scales", default="fp16", help="fp16 and/or kq (quantize --scales)")
    ap.add_argument("--chars", type=int, default=12000)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--no-ppl", action="store_true")
    ap.add_argument("-t", "--threads", type=int, default=None)
    a = ap.parse_args()
    src = resolve_model(a.model)
    text = TEXT.read_text(encoding="utf-8")[:a.chars]

    def ppl(path):
        if a.no_ppl:
            return None, None
        e = Engine(path, n_ctx=a.ctx, n_threads=a.threads)
        p, n, _ = e.perplexity(text, a.ctx)
        return p, n

    p, n = ppl(src)
    print(json.dumps({"model": str(src), "variant": "source", "ppl": p, "chunks": n, "ctx": a.ctx}), flush=True)
    with tempfile.TemporaryDirectory() as d:
        runs = []
        for scales in a.scales.split(","):
            for bits in a.bits.split(","):
                if scales == "kq":
                    if bits.isdigit() and int(bits) in KQ_GROUPS:
                        runs.append((scales, bits, None))
                    continue
                runs += [(scales, bits, group) for group in map(int, a.groups.split(","))]
        for scales, bits, group in runs:
            for method in a.methods.split(","):
                for recipe in a.recipes.split(","):
                    out = pathlib.Path(d) / "q.gguf"
                    t0 = time.perf_counter()
                    rep = quantize_model(src, out, bits, group, method=method, progress=False, threads=a.threads,
                                         mix=recipe == "mix", scales=scales)
                    dt = time.perf_counter() - t0
                    p, n = ppl(out)
                    print(json.dumps({"variant": rep.label, "bits": bits, "group": group or KQ_GROUPS[int(bits)],
                                      "scales": scales, "method": method, "recipe": recipe, "seconds": round(dt, 2),
                                      "nmse": rep.nmse, "ppl": p, "chunks": n, "bytes": rep.bytes_out,
                                      "group_fallback": len(rep.group_fallback)}), flush=True)


if __name__ == "__main__":
    main()
