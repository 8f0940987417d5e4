"""Q4_K / Q2_K repack layouts side by side: µs per GEMV/GEMM call and GB/s of packed weights for the
compact k-quant sub-scale layout (scale_bytes 1, or 3 for Q2_K) against fp32 scales (scale_bytes 4), same blocks,
same kernel, cold weights (rotating copies larger than the last-level cache). A script, not a test.

    PYTHONPATH=python python3 bench/q4k_layout.py [--shapes 1536x8960,8960x1536] [--n 1,8] [--type Q4_K]
"""
import argparse
import json

import numpy as np

from lutllm import _core

COLD_BYTES = 256 << 20
TYPES = {"Q4_K": (12, 144, 0), "Q2_K": (10, 84, 80)}  # type id, block bytes, offset of fp16 d, dmin


def random_blocks(rng, type_name, rows, k):
    tid, bb, dpos = TYPES[type_name]
    nb = rows * k // 256
    blocks = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)
    blocks[:, dpos:dpos + 4] = rng.uniform(1e-4, 1e-2, size=(nb, 2)).astype(np.float16).view(np.uint8)
    return blocks.reshape(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="1536x8960,8960x1536", help="rows x k")
    ap.add_argument("--n", default="1", help="tokens per call (1 = GEMV kernel)")
    ap.add_argument("--type", default="Q4_K", choices=sorted(TYPES))
    ap.add_argument("--isa", default=[i for i in _core.available_isas() if i != "ref"][-1])
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per layout")
    ap.add_argument("--iters", type=int, default=40)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    tid = TYPES[args.type][0]
    for shape in args.shapes.split(","):
        rows, k = (int(v) for v in shape.split("x"))
        blocks = random_blocks(rng, args.type, rows, k)
        lay = {}
        for kq in (False, True):
            packed, fmt = _core.lut_repack_ggml(tid, blocks, rows, k, kq=kq)
            n_copies = max(2, min(64, COLD_BYTES // packed.nbytes))
            lay[kq] = (fmt, [packed.copy() for _ in range(n_copies)], packed.nbytes)
        kind = lay[True][0][0]
        for n in (int(v) for v in args.n.split(",")):
            x = rng.standard_normal((n, k)).astype(np.float32)
            ag = 128
            tables = _core.run_lut_build("lut_build_g4__ref", x, ag)
            name = f"lut_{'gemv' if n == 1 else 'gemm'}_w{kind}_g4__{args.isa}"
            best = {False: [], True: []}
            for _ in range(args.rounds):  # alternate so drift hits both layouts alike
                for kq in (False, True):
                    fmt, copies, _ = lay[kq]
                    ts = _core.lut_time_calls(name, copies, tuple(fmt), rows, k, *tables, ag, args.iters)
                    best[kq].append(float(np.median(ts[1:])))
            res = {}
            for kq in (False, True):
                sec = min(best[kq])
                res[kq] = sec
                print(json.dumps({"type": args.type, "layout": "compact" if kq else "fp32", "rows": rows, "k": k,
                                  "n": n, "isa": args.isa, "bytes": lay[kq][2], "us": round(sec * 1e6, 1),
                                  "gbps": round(lay[kq][2] / sec / 1e9, 2)}))
            print(f"# {args.type} {rows}x{k} n={n} {args.isa}: compact/fp32 bytes {lay[True][2] / lay[False][2]:.3f}, "
                  f"time {res[True] / res[False]:.3f} (speedup {res[False] / res[True]:.2f}x)")


if __name__ == "__main__":
    main()
