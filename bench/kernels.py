"""Kernel benchmark: LUT GEMV/GEMM per ISA, bit width and shape, as µs per call and GB/s of weights
streamed, beside the machine's measured DRAM read bandwidth (bench/membw.c). A script, not a test.

    PYTHONPATH=python python3 bench/kernels.py [--quick] [--isa avx2,avx512] [--n 1,8,64,256] [--threads 1,2]
    PYTHONPATH=python python3 bench/kernels.py --ggml Q2_K,Q3_K --shapes 8960x1536,1536x8960 --n 1 --threads 1,2
    PYTHONPATH=python python3 bench/kernels.py --q6k-only --threads 1,2 --repeat 5   # Q6_K GEMV only

Weights are cold: each call reads the next of several copies whose total exceeds the last-level
cache. With T threads the rows are split into tasks the way runtime/linear.cc splits them (LUT: whole
16-row blocks, about 4 tasks per thread) and the roofline is the probe run with T threads. Besides
the LUT kernels it times the int8 path: Q4_0 / Q8_0 on the same shapes and Q6_K GEMV on the shapes
of a Qwen2.5-1.5B output head and ffn_down (Q6_K_SHAPES). Output: one JSON object per line, then a
short table. --ggml times GGUF k-quant types repacked exactly (lut_repack_ggml) instead, in the
current layout and the older ones (GGML_LAYOUTS), alternating between them (--rounds) so that drift
hits all alike; each record carries its layout and bits/weight.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from lutllm import _core

SHAPES = [(576, 1536), (1536, 576), (1536, 8960), (8960, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]
KINDS = {1: "w1", 2: "w2", 3: "w3", 4: "w4", 5: "wt"}
GROUP = 128  # LUT weight group (64 where K is not a multiple of 128); the table-scale group matches it
COLD_BYTES = 256 << 20  # LLC here is 32 MiB; rotate through at least 8x that
Q6_K_SHAPES = [(151936, 1536), (1536, 8960)]  # tied embedding / output head and ffn_down of Qwen2.5-1.5B
Q6_K_BLOCK = 210  # bytes per 256 weights: ql[128] qh[64] scales[16] d(fp16)
# --ggml: type -> (type id, block bytes, offset of its fp16 d (and dmin), {layout: LUT format}) (lut.h)
GGML_LAYOUTS = {
    "Q2_K": (10, 84, 80, {"kq4": (2, 16, 3, 1), "kq8 (older)": (2, 16, 1, 1), "fp32": (2, 16, 4, 1)}),
    "Q3_K": (11, 110, 108, {"w3 kq sym": (3, 16, 1, 0), "w4 kq8 (older)": (4, 16, 1, 1), "w3 fp32": (3, 16, 4, 0)}),
    "Q4_K": (12, 144, 0, {"kq8": (4, 32, 1, 1), "fp32": (4, 32, 4, 1)}),
}


def dram_read_gbps(threads=1):
    """Compile and run the small read-bandwidth probe (bench/membw.c) -> its JSON record (gbps = the better of
    plain and software-prefetching reads); None if no C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "membw.c")
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "membw")
        subprocess.run([cc, "-O2", "-pthread", "-o", exe, src], check=True)
        out = subprocess.run([exe, str(threads), "512", "5"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def cold_copies(packed):
    n = max(2, min(64, COLD_BYTES // max(packed.nbytes, 1)))
    return [packed.copy() for _ in range(n)]


def act_group(fmt):
    """Activations per table scale the kernels expect: 256 for k-quant sub-scales (lut.h), else G."""
    return 256 if fmt[2] in (1, 3) else fmt[1]


def time_lut(name, copies, fmt, rows, k, tables, iters, threads):
    ts = _core.lut_time_calls(name, copies, fmt, rows, k, *tables, act_group(fmt), iters, threads)
    return float(np.median(ts[1:] if len(ts) > 2 else ts))


def time_q8(name, copies, rows, k, xq, iters, threads):
    ts = _core.q8_time_calls(name, copies, rows, k, xq, iters, threads)
    return float(np.median(ts[1:] if len(ts) > 2 else ts))


def random_q6_k(rng, rows, k):
    """Q6_K blocks with random codes and scales and a finite d (the timing does not depend on values)."""
    blocks = rng.integers(0, 256, size=(rows * k // 256, Q6_K_BLOCK), dtype=np.uint8)
    blocks[:, 192:208] = rng.integers(-40, 40, size=(blocks.shape[0], 16), dtype=np.int8).view(np.uint8)
    blocks[:, 208:210] = np.full((blocks.shape[0], 1), 0.01, dtype=np.float16).view(np.uint8)
    return blocks.reshape(-1)


def random_kquant(rng, type_name, rows, k):
    """GGUF blocks of a k-quant type with random codes and sub-scales and finite d (Q3_K: of either sign)."""
    _, bb, dpos, _ = GGML_LAYOUTS[type_name]
    nb = rows * k // 256
    blocks = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    nd = 1 if type_name == "Q3_K" else 2
    lo = -1e-2 if type_name == "Q3_K" else 1e-4
    blocks[:, dpos:dpos + 2 * nd] = rng.uniform(lo, 1e-2, size=(nb, nd)).astype(np.float16).view(np.uint8)
    return blocks.reshape(-1)


def bench_ggml(args, rng, shapes, ns, isas, threads, record):
    """Repacked GGUF k-quant types, every layout of GGML_LAYOUTS, rounds alternating between layouts."""
    for type_name in args.ggml.split(","):
        tid, _, _, layouts = GGML_LAYOUTS[type_name]
        for rows, k in shapes:
            blocks = random_kquant(rng, type_name, rows, k)
            lay = {}
            for label, fmt in layouts.items():
                packed, f = _core.lut_repack_ggml(tid, blocks, rows, k, fmt=fmt)
                lay[label] = (tuple(f), cold_copies(packed), packed.nbytes)
            for n in ns:
                x = rng.standard_normal((n, k), dtype=np.float32)
                for isa in isas:
                    for th in threads:
                        best = {label: [] for label in lay}
                        for _ in range(args.rounds):
                            for label, (fmt, copies, _) in lay.items():
                                name = f"lut_{'gemv' if n == 1 else 'gemm'}_{KINDS[fmt[0]]}_g4__{isa}"
                                if not any(kk["name"] == name and kk["supported"] for kk in _core.kernel_list()):
                                    continue
                                tables = _core.run_lut_build("lut_build_g4__ref", x, act_group(fmt))
                                best[label].append(time_lut(name, copies, fmt, rows, k, tables, 20 if n == 1 else 3, th))
                        for label, (fmt, _, nbytes) in lay.items():
                            if best[label]:
                                record(f"lut_{'gemv' if n == 1 else 'gemm'}_{KINDS[fmt[0]]}_g4__{isa}", rows, k, n,
                                       type_name, nbytes, min(best[label]), th, layout=label, fmt=list(fmt),
                                       bits_per_weight=round(nbytes * 8 / (-(-rows // 16) * 16 * k), 4))
            del lay


def q8_isa_kernel(isa, op):
    names = {kk["name"]: kk["supported"] for kk in _core.kernel_list()}
    name = f"{op}__{isa}"
    return name if names.get(name) else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", default=",".join(i for i in _core.available_isas() if i != "ref"))
    ap.add_argument("--n", default="1,8,64,256", help="tokens per call (1 = GEMV kernel)")
    ap.add_argument("--kinds", default="1,2,3,4,5", help="1..4 bits, 5 = ternary")
    ap.add_argument("--shapes", default="all", help="'all' or e.g. 4096x11008,1536x8960 (rows x k)")
    ap.add_argument("--quick", action="store_true", help="GEMM (n > 1) only on 4096x4096; fewer repeats")
    ap.add_argument("--no-q8", action="store_true", help="skip the int8 (Q4_0 / Q8_0 x Q8) comparison")
    ap.add_argument("--no-q6k", action="store_true", help="skip the Q6_K GEMV (Q6_K_SHAPES)")
    ap.add_argument("--threads", default="1", help="thread counts, e.g. 1,2 (rows split as the runtime does)")
    ap.add_argument("--ggml", default="", help="instead: GGUF k-quant types repacked exactly, e.g. Q2_K,Q3_K "
                    "(every layout of GGML_LAYOUTS)")
    ap.add_argument("--rounds", type=int, default=3, help="--ggml: alternating rounds per layout (best is kept)")
    ap.add_argument("--q6k-only", action="store_true", help="only the Q6_K GEMV (Q6_K_SHAPES): no LUT or Q4_0/Q8_0")
    ap.add_argument("--repeat", type=int, default=1, help="time each Q6_K case this many times (one record each)")
    args = ap.parse_args()

    isas = [i for i in args.isa.split(",") if i]
    ns = [int(v) for v in args.n.split(",")]
    kinds = [int(v) for v in args.kinds.split(",")]
    threads = [int(v) for v in args.threads.split(",")]
    shapes = SHAPES if args.shapes == "all" else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.q6k_only:
        shapes = []
    bw = {}
    for th in threads:
        probe = dram_read_gbps(th)
        bw[th] = probe["gbps"] if probe else None
        print(json.dumps(probe or {"probe": "dram_read", "threads": th, "gbps": None}), flush=True)
    rng = np.random.default_rng(0)
    rows_out = []

    def record(name, rows, k, n, bits, nbytes, sec, th, **extra):
        rec = {"kernel": name, "rows": rows, "k": k, "n": n, "bits": bits, "threads": th, **extra,
               "bytes": int(nbytes), "us": round(sec * 1e6, 1), "gbps": round(nbytes / sec / 1e9, 2),
               "gmacs": round(rows * k * n / sec / 1e9, 2),
               "roofline_frac": round(nbytes / sec / 1e9 / bw[th], 3) if bw[th] else None}
        print(json.dumps(rec), flush=True)
        rows_out.append(rec)

    if args.ggml:
        bench_ggml(args, rng, shapes, ns, isas, threads, record)
        shapes = []
        args.no_q6k = True
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
                    for th in threads:
                        sec = time_lut(name, copies, fmt, rows, k, tables, iters, th)
                        record(name, rows, k, n, KINDS[kind], packed.nbytes, sec, th, group=group)
            del copies
        if not args.no_q8 and (not args.quick or (rows, k) == (4096, 4096)):
            # int8 dot-product path of the same runtime: Q4_0 and Q8_0 weights x Q8 activations
            from gguf import quants, GGMLQuantizationType

            for tname in ("Q4_0", "Q8_0"):
                blocks = quants.quantize(w, GGMLQuantizationType[tname]).reshape(-1)
                copies = cold_copies(blocks)
                for n in ns:
                    if args.quick and n > 1 and (rows, k) != (4096, 4096):
                        continue
                    for isa in isas:
                        name = q8_isa_kernel(isa, f"matmul_{tname.lower()}_q8")
                        if not name:
                            continue
                        xq = _core.run_quantize_act(q8_isa_kernel(isa, "quantize_act_q8") or "quantize_act_q8__ref",
                                                    x_all[:n])
                        for th in threads:
                            sec = time_q8(name, copies, rows, k, xq, 3 if n >= 64 else 10, th)
                            record(name, rows, k, n, tname, blocks.nbytes, sec, th)
                del copies
    if not args.no_q6k:
        # Q6_K GEMV (int8 path): the 2-bit models keep their output head in Q6_K
        for rows, k in Q6_K_SHAPES:
            blocks = random_q6_k(rng, rows, k)
            copies = cold_copies(blocks)
            x = rng.standard_normal((1, k), dtype=np.float32)
            for isa in isas:
                name = q8_isa_kernel(isa, "matmul_q6_K_q8")
                if not name:
                    continue
                xq = _core.run_quantize_act(q8_isa_kernel(isa, "quantize_act_q8") or "quantize_act_q8__ref", x)
                for rep in range(args.repeat):
                    for th in threads:
                        sec = time_q8(name, copies, rows, k, xq, 6 if rows * k > 1e8 else 20, th)
                        record(name, rows, k, 1, "Q6_K", blocks.nbytes, sec, th, rep=rep)
            del copies, blocks
    for th in threads:
        print(f"\nDRAM read bandwidth ({th} thread{'s' if th > 1 else ''}): {bw[th]} GB/s", file=sys.stderr)
    print(f"{'kernel':34s} {'shape':>12s} {'n':>4s} {'thr':>3s} {'us':>10s} {'GB/s':>7s} {'%bw':>5s} {'GMAC/s':>7s}",
          file=sys.stderr)
    for r in rows_out:
        frac = f"{100 * r['roofline_frac']:.0f}" if r["roofline_frac"] else "-"
        print(f"{r['kernel']:34s} {r['rows']:>6d}x{r['k']:<5d} {r['n']:>4d} {r['threads']:>3d} {r['us']:>10.1f} "
              f"{r['gbps']:>7.2f} {frac:>5s} {r['gmacs']:>7.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
