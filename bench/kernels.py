"""Kernel benchmark: LUT GEMV/GEMM per ISA, bit width and shape, as µs per call and GB/s of weights
streamed, beside the machine's measured DRAM read bandwidth (bench/membw.c). A script, not a test.

    PYTHONPATH=python python3 bench/kernels.py [--quick] [--isa avx2,avx512] [--n 1,8,64,256]

Weights are cold: each call reads the next of several copies whose total exceeds the last-level
cache. One thread. Output: one JSON object per line, then a short table.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from lutllm import _core

SHAPES = [(576, 1536), (1536, 576), (1536, 8960), (8960, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]
KINDS = {1: "w1", 2: "w2", 3: "w3", 4: "w4", 5: "wt"}
GROUP = 128  # LUT weight group (64 where K is not a multiple of 128); the table-scale group matches it
COLD_BYTES = 256 << 20  # LLC here is 32 MiB; rotate through at least 8x that


def dram_read_gbps(threads=1):
    """Compile and run the small read-bandwidth probe (bench/membw.c); None if no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "membw.c")
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "membw")
        subprocess.run([cc, "-O2", "-pthread", "-o", exe, src], check=True)
        out = subprocess.run([exe, str(threads), "512", "5"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["gbps"]


def cold_copies(packed):
    n = max(2, min(64, COLD_BYTES // max(packed.nbytes, 1)))
    return [packed.copy() for _ in range(n)]


def time_lut(name, copies, fmt, rows, k, tables, iters):
    ts = _core.lut_time_calls(name, copies, fmt, rows, k, *tables, fmt[1], iters)
    return float(np.median(ts[1:] if len(ts) > 2 else ts))


def time_q8(name, copies, rows, k, xq, iters):
    ts = []
    for i in range(iters):
        t0 = time.perf_counter()
        _core.run_matmul_q8(name, copies[i % len(copies)], rows, k, xq)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts[1:] if len(ts) > 2 else ts))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default=",".join(i for i in _core.available_isas() if i != "ref"))
    ap.add_argument("--n", default="1,8,64,256", help="tokens per call (1 = GEMV kernel)")
    ap.add_argument("--kinds", default="1,2,3,4,5", help="1..4 bits, 5 = ternary")
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 4096x11008,1536x8960 (rows x k)")
    ap.add_argument("--quick", action="store_true", help="GEMM (n > 1) only on 4096x4096; fewer repeats")
    ap.add_argument("--no-q8", action="store_true", help="skip the int8 (Q4_0 / Q8_0 x Q8) comparison")
    args = ap.parse_args()

    isas = [i for i in args.isa.split(",") if i]
    ns = [int(v) for v in args.n.split(",")]
    kinds = [int(v) for v in args.kinds.split(",")]
    shapes = SHAPES if args.shapes == "all" else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    bw1 = dram_read_gbps(1)
    print(json.dumps({"probe": "dram_read", "threads": 1, "gbps": bw1}), flush=True)
    rng = np.random.default_rng(0)
    rows_out = []
    for rows, k in shapes:
        w = rng.standard_normal((rows, k), dtype=np.float32)
        x_all = rng.standard_normal((max(ns), k), dtype=np.float32)
        group = GROUP if k % GROUP == 0 else 64
        tables_all = _core.run_lut_build("lut_build_g4__ref", x_all, group)
        for kind in kinds:
            packed, fmt = _core.lut_quantize(w, kind, group)
            copies = cold_copies(packed)
            for n in ns:
                if args.quick and n > 1 and (rows, k) != (4096, 4096):
                    continue
                tables = tuple(a[:n] for a in tables_all)
                for isa in isas:
                    op = "gemv" if n == 1 else "gemm"
                    name = f"lut_{op}_{KINDS[kind]}_g4__{isa}"
                    if not any(kk["name"] == name and kk["supported"] for kk in _core.kernel_list()):
                        continue
                    iters = 3 if n >= 64 else (20 if not args.quick else 8)
                    sec = time_lut(name, copies, fmt, rows, k, tables, iters)
                    rec = {"kernel": name, "rows": rows, "k": k, "n": n, "bits": KINDS[kind], "group": group,
                           "bytes": int(packed.nbytes), "us": round(sec * 1e6, 1),
                           "gbps": round(packed.nbytes / sec / 1e9, 2),
                           "gmacs": round(rows * k * n / sec / 1e9, 2),
                           "roofline_frac": round(packed.nbytes / sec / 1e9 / bw1, 3) if bw1 else None}
                    print(json.dumps(rec), flush=True)
                    rows_out.append(rec)
            del copies
        if not args.no_q8 and (not args.quick or (rows, k) == (4096, 4096)):
            # int8 dot-product path of the same runtime: Q4_0 and Q8_0 weights x Q8 activations
            from gguf import quants, GGMLQuantizationType

            for tname, tid in (("Q4_0", 2), ("Q8_0", 8)):
                blocks = quants.quantize(w, GGMLQuantizationType[tname]).reshape(-1)
                copies = cold_copies(blocks)
                for n in ns:
                    if args.quick and n > 1 and (rows, k) != (4096, 4096):
                        continue
                    for isa in isas:
                        name = f"matmul_{tname.lower()}_q8__{isa}"
                        if not any(kk["name"] == name and kk["supported"] for kk in _core.kernel_list()):
                            continue
                        xq = _core.run_quantize_act(f"quantize_act_q8__{isa}" if any(
                            kk["name"] == f"quantize_act_q8__{isa}" for kk in _core.kernel_list()) else
                            "quantize_act_q8__ref", x_all[:n])
                        sec = time_q8(name, copies, rows, k, xq, 3 if n >= 64 else 10)
                        rec = {"kernel": name, "rows": rows, "k": k, "n": n, "bits": tname, "bytes": int(blocks.nbytes),
                               "us": round(sec * 1e6, 1), "gbps": round(blocks.nbytes / sec / 1e9, 2),
                               "gmacs": round(rows * k * n / sec / 1e9, 2),
                               "roofline_frac": round(blocks.nbytes / sec / 1e9 / bw1, 3) if bw1 else None}
                        print(json.dumps(rec), flush=True)
                        rows_out.append(rec)
                del copies
    print(f"\nDRAM read bandwidth (1 thread): {bw1} GB/s", file=sys.stderr)
    print(f"{'kernel':34s} {'shape':>11s} {'n':>4s} {'us':>10s} {'GB/s':>7s} {'%bw':>5s} {'GMAC/s':>7s}", file=sys.stderr)
    for r in rows_out:
        frac = f"{100 * r['roofline_frac']:.0f}" if r["roofline_frac"] else "-"
        print(f"{r['kernel']:34s} {r['rows']:>5d}x{r['k']:<5d} {r['n']:>4d} {r['us']:>10.1f} {r['gbps']:>7.2f} "
              f"{frac:>5s} {r['gmacs']:>7.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
