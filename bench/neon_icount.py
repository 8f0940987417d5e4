"""NEON LUT kernels without ARM hardware: instructions executed per weight, counted under qemu.

Builds bench/neon_icount.cc with the aarch64 cross compiler (the flags of a release build), runs it
under qemu-aarch64-static with an execution trace (-d in_asm,exec,nochain) and sums the instructions
of every translated block executed between each call's two marker functions. Not a timing: a proxy
for the compute cost of a kernel (the LUT GEMV is compute-bound on small ARM cores), exact and
repeatable, for comparing kernel changes on a machine that cannot run them natively.

    python3 bench/neon_icount.py [--rows 64] [--k 2048] [--n 1] [--formats q2_k,q4_k,...] [--against REV]
--against REV also counts native/arm/lut_neon.cc as of git revision REV (the rest of the tree as it
is) and prints the ratio. Prints JSON lines and a table.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# kind, group, scale_bytes, has_offset: the repacked forms of GGUF types and common `lutllm quantize` outputs
FORMATS = {
    "q2_k": (2, 16, 3, 1),     # W2 g16 KQ4
    "q3_k": (3, 16, 1, 0),     # W3 g16 KQ sym
    "q4_k": (4, 32, 1, 1),     # W4 g32 KQ u8
    "q4_0": (4, 32, 2, 0),
    "q4_1": (4, 32, 2, 1),
    "tq2_0": (5, 128, 2, 0),   # ternary g128
    "w2g128": (2, 128, 2, 1),  # lutllm quantize --bits 2 --group 128
    "w3g64": (3, 64, 2, 1),
    "w1g128": (1, 128, 2, 1),
}
# int8 path (types with more than 4 bits): GGUF type x ISA, named as the harness names them
INT8 = [f"{t}:{isa}" for t in ("q4_0", "q4_1", "q8_0", "q5_0", "q4_k", "q5_k", "q6_k") for isa in ("ref", "neon", "dotprod")]
SOURCES = ["bench/neon_icount.cc", "native/ref/lut_ref.cc", "native/ref/lut_pack.cc", "native/ref/matmul_q8.cc",
           "native/arm/matmul_q8_neon.cc", "native/arm/matmul_q8_dotprod.cc", "native/arm/lut_neon.cc"]


def build(tmp, name, neon_source=None):
    """The harness with the release build's flags; neon_source replaces native/arm/lut_neon.cc."""
    cxx = shutil.which("aarch64-linux-gnu-g++")
    if not cxx or not shutil.which("qemu-aarch64-static"):
        raise SystemExit("needs aarch64-linux-gnu-g++ and qemu-aarch64-static (apt: g++-aarch64-linux-gnu qemu-user-static)")
    exe = os.path.join(tmp, name)
    srcs = [os.path.join(ROOT, s) for s in SOURCES]
    if neon_source:
        srcs[-1] = neon_source
    # one -march for all (the release build gives only the *_dotprod.cc files +dotprod; the intrinsics
    # fix the instructions of the others)
    cmd = [cxx, "-static", "-std=c++17", "-O3", "-DNDEBUG", "-ffp-contract=off", "-march=armv8.2-a+dotprod",
           "-I", os.path.join(ROOT, "native/include"), *srcs, "-o", exe]
    subprocess.run(cmd, check=True)
    return exe


def source_at(rev, tmp):
    """native/arm/lut_neon.cc as of git revision rev, written into tmp."""
    r = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:native/arm/lut_neon.cc"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"--against {rev}: {r.stderr.strip()}")
    path = os.path.join(tmp, "lut_neon_against.cc")
    with open(path, "w") as f:
        f.write(r.stdout)
    return path


def count(exe, args):
    """Instructions executed between lutllm_icount_begin(i) and lutllm_icount_end(i), per i."""
    p = subprocess.Popen(["qemu-aarch64-static", "-d", "in_asm,exec,nochain", exe, *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1 << 20)
    tb_size, cur, n = {}, None, 0
    counts, inside = [], False
    trace = re.compile(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/[^\]]*\]\s*(\S*)")
    insn = re.compile(r"^0x([0-9a-f]+):\s")
    for line in p.stderr:  # the trace: "IN:" blocks (instructions of a block) and one "Trace" line per execution
        if line.startswith("Trace"):
            if cur is not None:
                tb_size[cur], cur = n, None
            m = trace.match(line)
            sym = m.group(2)
            if sym == "lutllm_icount_begin":
                counts.append(0)
                inside = True
            elif sym == "lutllm_icount_end":
                inside = False
            elif inside:
                counts[-1] += tb_size.get(int(m.group(1), 16), 0)
        elif line.startswith("IN:"):
            if cur is not None:
                tb_size[cur] = n
            cur, n = None, 0
        else:
            m = insn.match(line)
            if m:
                if cur is None:
                    cur = int(m.group(1), 16)
                n += 1
    out = p.stdout.read()
    if p.wait() != 0:
        raise SystemExit(f"harness failed: {out}")
    if len(counts) != len(args) - 3:
        raise SystemExit(f"expected {len(args) - 3} marked calls, traced {len(counts)}")
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=1, help="tokens per call (1 = the GEMV kernel)")
    ap.add_argument("--formats", default=",".join(list(FORMATS) + INT8),
                    help=f"comma list of LUT formats {', '.join(FORMATS)} and int8 kernels {', '.join(INT8)}")
    ap.add_argument("--against", metavar="REV", help="also count lut_neon.cc of this git revision")
    a = ap.parse_args()
    names = a.formats.split(",")
    for name in names:
        if name not in FORMATS and name not in INT8:
            raise SystemExit(f"unknown format {name!r}; known: {', '.join(list(FORMATS) + INT8)}")
    args = [str(a.rows), str(a.k), str(a.n)] + [",".join(map(str, FORMATS[nm])) if nm in FORMATS else nm for nm in names]
    weights = a.rows * a.k * a.n
    with tempfile.TemporaryDirectory() as tmp:
        counts = count(build(tmp, "neon_icount"), args)
        base = count(build(tmp, "neon_icount_against", source_at(a.against, tmp)), args) if a.against else None
    rows = []
    for i, name in enumerate(names):
        kind, g, sb, off = FORMATS.get(name, (0, 32, 0, 0))
        r = {"format": name, "kind": kind, "group": g, "scale_bytes": sb, "offset": off, "rows": a.rows, "k": a.k,
             "n": a.n, "instructions": counts[i], "per_weight_token": round(counts[i] / weights, 4)}
        if base:
            r.update({"against": a.against, "against_instructions": base[i],
                      "against_per_weight_token": round(base[i] / weights, 4), "ratio": round(base[i] / counts[i], 3)})
        rows.append(r)
        print(json.dumps(r))
    head = f"\n{'format':12s} {'kind':>4s} {'G':>4s} {'instructions':>13s} {'per weight x token':>19s}"
    print(head + (f" {'at ' + a.against:>14s} {'ratio':>6s}" if base else ""))
    for r in rows:
        line = f"{r['format']:12s} {r['kind']:4d} {r['group']:4d} {r['instructions']:13d} {r['per_weight_token']:19.3f}"
        if base:
            line += f" {r['against_per_weight_token']:14.3f} {r['ratio']:5.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
