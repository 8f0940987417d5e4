"""LUT (table-lookup) kernels: SIMD == scalar twin bit for bit, twin vs float math within derived
bounds, overflow-free accumulation, and exact GGUF repacks. Kernels run through lutllm._core."""
import numpy as np
import pytest

_core = pytest.importorskip("lutllm._core")

KINDS = {1: "w1", 2: "w2", 3: "w3", 4: "w4", 5: "wt"}
KIND_IDS = [1, 2, 3, 4, 5]
GGML = {"Q4_0": 2, "Q4_1": 3, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "TQ1_0": 34, "TQ2_0": 35}


def simd_isas():
    return [i for i in ("avx2", "avx512", "neon", "dotprod") if i in _core.available_isas()]


def kernel_isas(op):
    names = {k["name"] for k in _core.kernel_list() if k["op"] == op}
    return [i for i in simd_isas() if any(n.endswith("__" + i) for n in names)]


def groups_for(kind):
    return (16, 32, 64, 128)


def misaligned(a, off):
    """Same contents at a byte offset `off` from an aligned start (read-only view)."""
    raw = np.zeros(a.nbytes + 64 + off, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + off
    raw[start:start + a.nbytes] = a.reshape(-1).view(np.uint8)
    return np.frombuffer(raw, dtype=np.uint8, count=a.nbytes, offset=start).view(a.dtype).reshape(a.shape)


def random_packed(rng, kind, group, rows, k, scale_bytes=2):
    """Random float weights quantized with the library's own quantizer -> (packed, fmt, dequantized)."""
    w = rng.standard_normal((rows, k)).astype(np.float32)
    packed, fmt = _core.lut_quantize(w, kind, group)
    return packed, fmt, _core.lut_unpack(packed, fmt, rows, k)


def run(isa, op, kind, packed, fmt, rows, k, tables, ag, **kw):
    return _core.run_lut_matmul(f"lut_{op}_{KINDS[kind]}_g4__{isa}", packed, fmt, rows, k, *tables, ag, **kw)


def table_bound(kind, group, s, ts):
    """Per (row, group) bound on |LUT result - exact float math| from table rounding (lut.h):
    each lookup is off by at most ts/2 in +-1 units and the +-1 sum is halved, so per quad a plane
    of weight m_b contributes m_b * ts/4; over G/4 quads and all planes that is
    |s| * ts * sum(m_b) * G/16 with sum(m_b) = 2^n - 1 (ternary: 2 planes of weight 1 -> G/8)."""
    m = 2.0 if kind == 5 else float((1 << kind) - 1)
    return np.abs(s) * ts * m * group / 16.0


KQ8, KQ4 = 1, 3  # k-quant sub-scale encodings (scale_bytes codes, lut.h)


def group_scales(fmt, packed, rows, k):
    """Per (row, group) scale s, derived from the packed bytes: the scale block follows the tiles of
    each group block (lut.h)."""
    kind, group, sb, off = fmt
    planes = 2 if kind == 5 else kind
    tile = 2 * group * planes
    nrb = (rows + 15) // 16
    ng = k // group
    if sb in (KQ8, KQ4):  # k-quant: [header: 16 fp16 d (, 16 fp16 dmin)][256/G group blocks] per 256
        gbb = tile + (16 if sb == KQ4 else 16 * (1 + off))
        hb = 32 * (1 + off)
        gps, nsup = 256 // group, k // 256
        sbb = hb + gps * gbb
        sup = packed[: nrb * nsup * sbb].reshape(nrb, nsup, sbb)
        d = np.ascontiguousarray(sup[:, :, :32]).view(np.float16).astype(np.float64)  # (nrb, nsup, 16)
        raw = sup[:, :, hb:].reshape(nrb, nsup, gps, gbb)[:, :, :, tile:tile + 16]
        sc = (raw & 15 if sb == KQ4 else raw if off else raw.view(np.int8)).astype(np.float64)
        s = d[:, :, None, :] * sc  # (nrb, nsup, gps, 16)
        return s.reshape(nrb, ng, 16).transpose(0, 2, 1).reshape(nrb * 16, ng)[:rows]
    gbb = tile + 16 * sb * (1 + off)
    blocks = packed[: nrb * ng * gbb].reshape(nrb, ng, gbb)
    raw = np.ascontiguousarray(blocks[:, :, tile:tile + 16 * sb])
    s = raw.view(np.float16 if sb == 2 else np.float32).astype(np.float64)  # (nrb, ng, 16)
    return s.transpose(0, 2, 1).reshape(nrb * 16, ng)[:rows]


def kq_parts(fmt, packed, rows, k):
    """K-quant layouts: per row the fp16 d, dmin of each super-block (rows, k/256) and the integer
    sc, m of each group (rows, k/G), float64, from the packed bytes (lut.h)."""
    kind, group, sb, off = fmt
    tile = 2 * group * kind
    nrb, ng, gps, nsup = (rows + 15) // 16, k // group, 256 // group, k // 256
    gbb, hb = tile + (16 if sb == KQ4 else 16 * (1 + off)), 32 * (1 + off)
    sbb = hb + gps * gbb
    sup = packed[: nrb * nsup * sbb].reshape(nrb, nsup, sbb)
    hdr = np.ascontiguousarray(sup[:, :, :hb]).view(np.float16).astype(np.float64)  # (nrb, nsup, 16 or 32)
    d, dmin = hdr[:, :, :16], (hdr[:, :, 16:] if off else np.zeros_like(hdr[:, :, :16]))
    raw = sup[:, :, hb:].reshape(nrb, nsup, gps, gbb)[:, :, :, tile:]
    if sb == KQ4:
        sc, m = raw[..., :16] & 15, raw[..., :16] >> 4
    elif off:
        sc, m = raw[..., :16], raw[..., 16:32]
    else:
        sc, m = raw[..., :16].view(np.int8), np.zeros_like(raw[..., :16])
    rowsup = lambda a: a.transpose(0, 2, 1).reshape(nrb * 16, nsup)[:rows]  # noqa: E731
    rowgrp = lambda a: a.astype(np.float64).reshape(nrb, ng, 16).transpose(0, 2, 1).reshape(nrb * 16, ng)[:rows]  # noqa: E731
    return rowsup(d), rowsup(dmin), rowgrp(sc), rowgrp(m)


def kq_bound(fmt, parts, ts_super):
    """Per-row bound on |LUT result - exact float math| of the k-quant super-block epilogue (lut.h):
    has_offset: sum_g |d sc_g| ts (2^n - 1) (G/16 + 1/64) + |dmin| m_g ts/32; symmetric:
    sum_g |d sc_g| ts ((2^n - 1) G/16 + 1/64); ts the table scale of the group's span."""
    kind, group, _, off = fmt
    d, dmin, sc, m = parts
    rep = 256 // group
    ds, dm = np.repeat(d, rep, axis=1), np.repeat(dmin, rep, axis=1)
    ts = np.repeat(np.asarray(ts_super, np.float64), rep)
    if off:
        per = np.abs(ds * sc) * ts * ((1 << kind) - 1) * (group / 16.0 + 1 / 64.0) + np.abs(dm) * m * ts / 32.0
    else:
        per = np.abs(ds * sc) * ts * (((1 << kind) - 1) * group / 16.0 + 1 / 64.0)
    return per.sum(axis=1)


# ---- SIMD == scalar twin ----------------------------------------------------------------------

@pytest.mark.parametrize("isa", ["avx2", "avx512", "neon", "dotprod"])
def test_build_bit_exact(isa, rng):
    if isa not in kernel_isas("lut_build"):
        pytest.skip(f"no {isa} table build on this CPU/registry")
    for ag in (16, 32, 64, 128):
        for k in (ag, 3 * ag, 5 * ag):
            x = (rng.standard_normal((3, k)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
            x[1, : min(k, 16)] = 0.0
            ref = _core.run_lut_build("lut_build_g4__ref", x, ag)
            got = _core.run_lut_build(f"lut_build_g4__{isa}", x, ag)
            for a, b in zip(ref, got):
                assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (isa, ag, k)


@pytest.mark.parametrize("kind", KIND_IDS)
@pytest.mark.parametrize("isa", ["avx2", "avx512", "neon", "dotprod"])
def test_matmul_bit_exact(isa, kind, rng):
    if isa not in kernel_isas("lut_gemv"):
        pytest.skip(f"no {isa} LUT kernels on this CPU/registry")
    cases = [(rows, g) for g in groups_for(kind) for rows in list(range(1, 18)) + [40, 100]]
    for i, (rows, g) in enumerate(cases):
        # K = 3 or 5 groups: never a multiple of the 64-activation AVX-512 step for g = 16 / 32.
        k = g * (3 if i % 2 else 5)
        w = rng.standard_normal((rows, k)).astype(np.float32)
        packed, fmt = _core.lut_quantize(w, kind, g)
        n_tok = 1 + i % 8
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        tab, sc, s16 = _core.run_lut_build("lut_build_g4__ref", x, g)
        off = i % 4
        p2, tab2 = misaligned(packed, off), misaligned(tab, (off + 1) % 4)
        ref = run("ref", "gemm", kind, packed, fmt, rows, k, (tab, sc, s16), g)
        got = run(isa, "gemm", kind, p2, fmt, rows, k, (tab2, sc, s16), g)
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), (isa, kind, g, rows, n_tok)
        one = run(isa, "gemv", kind, p2, fmt, rows, k, (tab2[:1], sc[:1], s16[:1]), g)
        assert np.array_equal(ref[:1].view(np.uint32), one.view(np.uint32)), (isa, kind, g, rows)
        if rows > 16:  # a thread's slice: starts at row block 1, ends mid-block
            sl = run(isa, "gemv", kind, p2, fmt, rows, k, (tab2[:1], sc[:1], s16[:1]), g, row_begin=16, row_end=rows - 1)
            assert np.array_equal(sl[0, 16:rows - 1].view(np.uint32), ref[0, 16:rows - 1].view(np.uint32))
            assert not sl[0, :16].any() and sl[0, rows - 1] == 0


@pytest.mark.parametrize("isa", ["avx2", "avx512", "neon", "dotprod"])
def test_matmul_bit_exact_k_blocked(isa, rng):
    """n_tok > 4 walks K in blocks (tables stay in cache); large K makes several blocks."""
    if isa not in kernel_isas("lut_gemm"):
        pytest.skip(f"no {isa} LUT kernels on this CPU/registry")
    for kind, g, n_tok in ((2, 32, 7), (3, 64, 7), (4, 128, 7), (5, 16, 7), (2, 16, 130)):
        rows, k = 35, 2048  # n_tok = 130 at g = 16 also splits the tokens into chunks
        packed, fmt, _ = random_packed(rng, kind, g, rows, k)
        tabs = _core.run_lut_build("lut_build_g4__ref", rng.standard_normal((n_tok, k)).astype(np.float32), 128)
        ref = run("ref", "gemm", kind, packed, fmt, rows, k, tabs, 128)
        got = run(isa, "gemm", kind, packed, fmt, rows, k, tabs, 128)
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), (isa, kind, g)


# ---- scalar twin vs float math ----------------------------------------------------------------

@pytest.mark.parametrize("kind", KIND_IDS)
def test_ref_vs_float_bound_and_nmse(kind, rng):
    """Error of the LUT result against float64 math on the same (dequantized) weights comes only
    from rounding the tables to int8; it must stay inside the derived per-group bound, and its
    NMSE on random data must stay small: the bound is 5e-4 (stated for 4-bit) for every kind,
    since the per-lookup error is ts/4 whatever n and the signal grows with 2^n as fast."""
    for g in groups_for(kind):
        rows, k, n_tok = 64, 512, 3
        packed, fmt, wd = random_packed(rng, kind, g, rows, k)
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        tab, sc, s16 = _core.run_lut_build("lut_build_g4__ref", x, g)
        y = run("ref", "gemm", kind, packed, fmt, rows, k, (tab, sc, s16), g)
        exact = x.astype(np.float64) @ wd.astype(np.float64).T
        s = group_scales(fmt, packed, rows, k)  # (rows, ng)
        for t in range(n_tok):
            bound = table_bound(kind, g, s, sc[t]).sum(axis=1)  # ag = g: one table scale per group
            # fp32 accumulation over K/G groups: a few ulps of the magnitude of the terms
            slack = 1e-5 * (np.abs(wd).astype(np.float64) @ np.abs(x[t]).astype(np.float64)) + 1e-6
            assert np.all(np.abs(y[t] - exact[t]) <= bound + slack), (kind, g, t)
        nmse = np.sum((y - exact) ** 2) / np.sum(exact ** 2)
        assert nmse <= 5e-4, (kind, g, nmse)


@pytest.mark.parametrize("isa", ["ref", "avx2", "avx512", "neon", "dotprod"])
@pytest.mark.parametrize("kind", KIND_IDS)
def test_no_overflow_at_max_magnitude(isa, kind):
    """Codes with bit 0 set in every plane and activations (c, 0, 0, 0) per quad make every table
    entry exactly +-127 and every lookup +127 (or -127): the largest |I| = 127 * (2^n - 1) * G/4
    (60960 for 4-bit G = 128). int16 partial sums must not wrap; since the tables are exact, the
    result equals float math to fp32 rounding."""
    if isa != "ref" and isa not in kernel_isas("lut_gemv"):
        pytest.skip(f"no {isa} LUT kernels on this CPU/registry")
    for g in groups_for(kind):
        rows, k = 20, 4 * g
        w = np.full((rows, k), 1.0, dtype=np.float32)
        w[:, 1] = 0.0  # min 0, max 1 -> q = 2^n - 1 except column 1 (x = 0 there); ternary: t = +1
        packed, fmt = _core.lut_quantize(w, kind, g)
        wd = _core.lut_unpack(packed, fmt, rows, k)
        for sign in (1.0, -1.0):
            x = np.zeros((2, k), dtype=np.float32)
            x[:, 0::4] = 3.0 * sign
            tabs = _core.run_lut_build("lut_build_g4__ref", x, g)
            y = run(isa, "gemm", kind, packed, fmt, rows, k, tabs, g)
            exact = x.astype(np.float64) @ wd.astype(np.float64).T
            np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-4)


# ---- GGUF repack ------------------------------------------------------------------------------

def random_blocks(rng, type_name, rows, k):
    """Raw GGUF blocks with random but valid content (finite scales, ternary codes 0..2)."""
    from gguf import quants, GGMLQuantizationType

    qt = GGMLQuantizationType[type_name]
    if type_name in ("Q4_0", "Q4_1", "TQ1_0"):
        w = rng.standard_normal((rows, k)).astype(np.float32)
        return quants.quantize(w, qt).reshape(rows, -1)
    bs, ts = quants.GGML_QUANT_SIZES[qt]
    nb = rows * k // bs
    blocks = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)

    def f16(lo, hi):
        return rng.uniform(lo, hi, size=(nb, 1)).astype(np.float16).view(np.uint8)

    if type_name == "Q4_K":  # d, dmin, scales[12], qs[128]
        blocks[:, 0:2], blocks[:, 2:4] = f16(1e-4, 1e-2), f16(1e-4, 1e-2)
    elif type_name == "Q2_K":  # scales[16], qs[64], d, dmin
        blocks[:, 80:82], blocks[:, 82:84] = f16(1e-4, 1e-2), f16(1e-4, 1e-2)
    elif type_name == "Q3_K":  # hmask[32], qs[64], scales[12] (6-bit signed sub-scales), d
        blocks[:, 108:110] = f16(-1e-2, 1e-2)
    elif type_name == "TQ2_0":  # qs[64], d: codes 0..2 only
        codes = rng.integers(0, 3, size=(nb, 64, 4), dtype=np.uint8)
        blocks[:, :64] = codes[..., 0] | codes[..., 1] << 2 | codes[..., 2] << 4 | codes[..., 3] << 6
        blocks[:, 64:66] = f16(1e-3, 1e-1)
    return blocks.reshape(rows, -1)


def _lossless(back, ref, type_name):
    """Unpacked repack == gguf's dequantize, bit for bit; for Q3_K as floats: its zero weights carry
    the sign of d*S in gguf and are +0 in the repack (s*q + o with q mirrored for negative S)."""
    ref = ref.astype(np.float32)
    if type_name == "Q3_K":
        return np.array_equal(back, ref) and np.array_equal(back.view(np.uint32)[ref != 0], ref.view(np.uint32)[ref != 0])
    return np.array_equal(back.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K", "Q3_K", "Q2_K", "TQ2_0", "TQ1_0"])
def test_repack_exact(type_name, rng):
    from gguf import quants, GGMLQuantizationType

    rows, k = 21, 512
    blocks = random_blocks(rng, type_name, rows, k)
    ref = quants.dequantize(blocks, GGMLQuantizationType[type_name]).reshape(rows, k)
    packed, fmt = _core.lut_repack_ggml(GGML[type_name], np.ascontiguousarray(blocks).reshape(-1), rows, k)
    assert fmt == _core.lut_format_for_ggml(GGML[type_name])
    back = _core.lut_unpack(packed, fmt, rows, k)
    assert _lossless(back, ref, type_name), type_name
    # the LUT path on the repacked tensor vs float math on gguf's dequantize, within the bound
    kind, g = fmt[0], fmt[1]
    x = rng.standard_normal((2, k)).astype(np.float32)
    kq = fmt[2] in (KQ8, KQ4)
    ag = 256 if kq else 128 if g <= 128 else g  # k-quant: one table scale per super-block
    tab, sc, s16 = _core.run_lut_build("lut_build_g4__ref", x, ag)
    for isa in ["ref"] + kernel_isas("lut_gemm"):
        y = run(isa, "gemm", kind, packed, fmt, rows, k, (tab, sc, s16), ag)
        exact = x.astype(np.float64) @ ref.astype(np.float64).T
        for t in range(2):
            if kq:
                bound = kq_bound(fmt, kq_parts(fmt, packed, rows, k), sc[t])
            else:
                ts = sc[t][(np.arange(k // g) * g) // ag]
                bound = table_bound(kind, g, group_scales(fmt, packed, rows, k), ts).sum(axis=1)
            slack = 1e-5 * (np.abs(ref) @ np.abs(x[t])) + 1e-6
            assert np.all(np.abs(y[t] - exact[t]) <= bound + slack), (type_name, isa, t)


def test_q4k_scales_need_fp32(rng):
    """Why Q4_K/Q2_K repack keeps d and sc apart (k-quant sub-scales) or stores fp32 products:
    d*sc of real-range blocks often has more mantissa bits than fp16 holds, so fp16 products would
    not be lossless."""
    d = rng.uniform(1e-4, 1e-2, size=4096).astype(np.float16).astype(np.float32)
    sc = rng.integers(0, 64, size=4096).astype(np.float32)
    prod = d * sc
    lossy = np.mean(prod.astype(np.float16).astype(np.float32) != prod)
    assert lossy > 0.3  # measured ~0.5 for uniform d and 6-bit sc


# ---- k-quant sub-scales: exact repack, super-block epilogue, bit-exact ISAs ------------------

def _kq_vs_f32(blocks, type_name, rows, k, x, isas, ag=256, fmts=None):
    """Repack the same GGUF blocks to the type's k-quant and fp32 layouts (fmts: an explicit pair,
    e.g. an older one): both decode to the same floats; on each layout every ISA kernel gives the
    scalar twin's bits (GEMM, GEMV, misaligned weights, a row range); the k-quant layout's
    super-block epilogue and the fp32 layout's per-group one both stay within their bounds of
    float64 math. Returns (compact bytes, fp32 bytes)."""
    flat = np.ascontiguousarray(blocks).reshape(-1)
    pk, fk = _core.lut_repack_ggml(GGML[type_name], flat, rows, k, fmt=fmts[0] if fmts else None)
    pf, ff = _core.lut_repack_ggml(GGML[type_name], flat, rows, k, kq=False, fmt=fmts[1] if fmts else None)
    assert fk[2] in (KQ8, KQ4) and ff[2] == 4 and fk[:2] == ff[:2] and fk[3] == ff[3]
    assert pk.size == _core.lut_packed_bytes(fk, rows, k) < pf.size
    back_k, back_f = _core.lut_unpack(pk, fk, rows, k), _core.lut_unpack(pf, ff, rows, k)
    assert np.array_equal(back_k.view(np.uint32), back_f.view(np.uint32))
    tabs = _core.run_lut_build("lut_build_g4__ref", x, ag)
    kind, g = fk[0], fk[1]
    exact = x.astype(np.float64) @ back_k.astype(np.float64).T
    slack = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(back_k).astype(np.float64).T) + 1e-30
    for fmt, packed in ((fk, pk), (ff, pf)):
        want = run("ref", "gemm", kind, packed, fmt, rows, k, tabs, ag)
        for t in range(x.shape[0]):
            if fmt is fk:
                bound = kq_bound(fmt, kq_parts(fmt, packed, rows, k), tabs[1][t])
            else:
                ts = tabs[1][t][(np.arange(k // g) * g) // ag]
                bound = table_bound(kind, g, group_scales(fmt, packed, rows, k), ts).sum(axis=1)
            assert np.all(np.abs(want[t] - exact[t]) <= bound + slack[t]), (type_name, fmt, t)
        for j, isa in enumerate(isas):
            mp = misaligned(packed, (rows + j) % 4)  # weights at any address
            got = run(isa, "gemm", kind, mp, fmt, rows, k, tabs, ag)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (type_name, isa, fmt, "gemm")
            t1 = tuple(np.ascontiguousarray(a[-1:]) for a in tabs)
            g1 = run(isa, "gemv", kind, mp, fmt, rows, k, t1, ag)
            assert np.array_equal(g1.view(np.uint32), want[-1:].view(np.uint32)), (type_name, isa, fmt, "gemv")
            if rows > 20:  # a row range starting in block 1 and ending mid-block: only those rows written
                got = run(isa, "gemm", kind, packed, fmt, rows, k, tabs, ag, row_begin=16, row_end=rows - 3)
                assert np.array_equal(got[:, 16:rows - 3].view(np.uint32), want[:, 16:rows - 3].view(np.uint32))
                assert not got[:, :16].any() and not got[:, rows - 3:].any()
    return pk.size, pf.size


@pytest.mark.parametrize("type_name", ["Q4_K", "Q3_K", "Q2_K"])
def test_kq_layout_exact_and_kernels_bit_exact(type_name, rng):
    """Odd row counts, one and several super-blocks, 1 and 5 tokens (GEMM tiles and remainders),
    plus worst-case scale bytes: 63 / 15 sub-scales (Q3_K: -32 and 31, every code mirrored or not)
    and the largest fp16 d of either sign."""
    from gguf import quants, GGMLQuantizationType

    for rows, k, n_tok in ((1, 256, 1), (17, 768, 5), (45, 512, 3), (16, 1024, 8)):
        blocks = random_blocks(rng, type_name, rows, k)
        if rows == 45:  # every sub-scale and sub-min at its maximum, d and dmin large, mixed signs
            bv = blocks.reshape(-1, {"Q4_K": 144, "Q3_K": 110, "Q2_K": 84}[type_name])  # a view: a row per block
            dd = (np.where(rng.random((bv.shape[0], 2)) < 0.5, -1.0, 1.0) * 6e4).astype(np.float16).view(np.uint8)
            if type_name == "Q3_K":  # sub-scales all -32 or all 31 per block; m = 4 * 31 or 3 * 32
                bv[:, 96:108] = np.where(rng.random((bv.shape[0], 1)) < 0.5, 0x00, 0xFF).astype(np.uint8)
                bv[:, 108:110] = dd[:, :2] * 0 + (np.where(rng.random((bv.shape[0], 1)) < 0.5, -1.0, 1.0)
                                                  * 1.5e4).astype(np.float16).view(np.uint8)
            elif type_name == "Q4_K":
                bv[:, 4:16] = 0xFF
                bv[:, 0:4] = dd
            else:
                bv[:, :16] = 0xFF
                bv[:, 80:84] = dd
        ref = quants.dequantize(blocks, GGMLQuantizationType[type_name]).reshape(rows, k)
        x = (rng.standard_normal((n_tok, k)) * rng.choice([1e-3, 1.0, 30.0])).astype(np.float32)
        nk, nf = _kq_vs_f32(blocks, type_name, rows, k, x, kernel_isas("lut_gemm"))
        pk, fk = _core.lut_repack_ggml(GGML[type_name], np.ascontiguousarray(blocks).reshape(-1), rows, k)
        back = _core.lut_unpack(pk, fk, rows, k)
        assert _lossless(back, ref, type_name)
        rb = (rows + 15) // 16
        bits, f32_bits = {"Q4_K": (4.625, 6.0), "Q3_K": (3.5625, 5.0), "Q2_K": (2.625, 6.0)}[type_name]
        assert nk == rb * 16 * k * bits / 8 and nf == rb * 16 * k * f32_bits / 8
        # the layouts earlier versions repacked to still repack exactly and run bit-identically
        if type_name in OLD_LAYOUTS:
            fmts, old_bits = OLD_LAYOUTS[type_name]
            ok, of = _kq_vs_f32(blocks, type_name, rows, k, x, kernel_isas("lut_gemm"), fmts=fmts)
            assert ok == rb * 16 * k * old_bits / 8
            po, fo = _core.lut_repack_ggml(GGML[type_name], np.ascontiguousarray(blocks).reshape(-1), rows, k, fmt=fmts[0])
            assert _lossless(_core.lut_unpack(po, fo, rows, k), ref, type_name)


@pytest.mark.parametrize("type_name", ["Q4_K", "Q3_K", "Q2_K"])
def test_kq_no_overflow_at_max_magnitude(type_name):
    """Largest integer sums of the k-quant super-block epilogue (lut.h): every sub-scale and sub-min
    at its maximum (Q4_K 63, Q2_K 15; Q3_K -32), codes at the end that maximizes |K_g| (Q4_K / Q2_K
    all ones; Q3_K all zero: q - 4 = -4), and activations (c, 0, 0, 0) per quad so that every table
    entry is exactly +-127 and every Qf_g is +-16 * 127 * G/4: |K_g| = 32 * 127 (2^n - 1) G/4
    (Q3_K: 16 * 127 * 8 * G/4) in every group, the largest J and M. Tables and Qf are then exact,
    so every ISA equals float math to fp32 rounding."""
    from gguf import quants, GGMLQuantizationType

    rows, k = 20, 512
    nb = rows * k // 256
    size = {"Q4_K": 144, "Q3_K": 110, "Q2_K": 84}[type_name]
    b = np.zeros((nb, size), np.uint8)
    one = np.array([1.0], np.float16).view(np.uint8)
    if type_name == "Q4_K":  # d, dmin, scales[12] (6-bit sc, m), qs
        b[:, 0:2], b[:, 2:4], b[:, 4:16], b[:, 16:] = one, one, 0xFF, 0xFF
    elif type_name == "Q2_K":  # scales[16] (sc | m << 4), qs, d, dmin
        b[:, :16], b[:, 16:80], b[:, 80:82], b[:, 82:84] = 0xFF, 0xFF, one, one
    else:  # hmask 0 and qs 0: q = -4; scales all 0: sub-scale -32; d
        b[:, 108:110] = one
    flat = b.reshape(-1)
    packed, fmt = _core.lut_repack_ggml(GGML[type_name], flat, rows, k)
    wd = quants.dequantize(b, GGMLQuantizationType[type_name]).reshape(rows, k).astype(np.float64)
    kind, g = fmt[0], fmt[1]
    for sign in (1.0, -1.0):
        x = np.zeros((3, k), dtype=np.float32)
        x[:, 0::4] = 3.0 * sign
        tabs = _core.run_lut_build("lut_build_g4__ref", x, 256)
        assert np.all(np.abs(tabs[0]) == 127)
        exact = x.astype(np.float64) @ wd.T
        for isa in ["ref"] + kernel_isas("lut_gemm"):
            for op, n in (("gemm", 3), ("gemv", 1)):
                y = run(isa, op, kind, packed, fmt, rows, k, tuple(np.ascontiguousarray(a[:n]) for a in tabs), 256)
                np.testing.assert_allclose(y, exact[:n], rtol=1e-6, atol=0, err_msg=f"{type_name} {isa} {op}")


# older k-quant layouts: ((compact fmt, fp32 fmt), compact bits/weight)
OLD_LAYOUTS = {"Q2_K": (((2, 16, KQ8, 1), (2, 16, 4, 1)), 3.125), "Q3_K": (((4, 16, KQ8, 1), (4, 16, 4, 1)), 5.125)}


def _real_q4k_tensors(path, limit=None):
    from lutllm.gguf_file import GGUFFile

    g = GGUFFile(path)
    out = []
    for t in g.tensors.values():
        if t.ggml_type == GGML["Q4_K"] and len(t.shape) == 2:
            out.append((t.name, np.ascontiguousarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1), int(t.shape[1]),
                        int(t.shape[0])))
            if limit and len(out) >= limit:
                break
    return out


def test_kq_layout_bit_identical_real_gemma(gemma3_path, rng):
    """Real Q4_K tensors of gemma3-270m: the compact layout gives the fp32 layout's bits."""
    tensors = _real_q4k_tensors(gemma3_path)
    names = [n for n, *_ in tensors]
    picked = [t for t in tensors if t[0] in ("blk.2.ffn_down.weight", "blk.0.attn_output.weight")] or tensors[:2]
    assert picked, names
    for name, raw, rows, k in picked:
        x = rng.standard_normal((3, k)).astype(np.float32)
        nk, nf = _kq_vs_f32(raw, "Q4_K", rows, k, x, kernel_isas("lut_gemm"))
        assert nk * 6.0 == nf * 4.625, name


@pytest.mark.slow
def test_kq_layout_bit_identical_real_qwen15(qwen15_path, rng):
    """Every Q4_K tensor of Qwen2.5-Coder-1.5B Q4_K_M: compact == fp32 layout, every ISA."""
    tensors = _real_q4k_tensors(qwen15_path)
    assert len(tensors) > 50
    for name, raw, rows, k in tensors:
        x = rng.standard_normal((2, k)).astype(np.float32)
        _kq_vs_f32(raw, "Q4_K", rows, k, x, kernel_isas("lut_gemm"))


def test_kq_format_checks():
    with pytest.raises(ValueError, match="super-block"):
        _core.lut_packed_bytes((4, 32, 1, 1), 16, 96)
    with pytest.raises(ValueError, match="super-block"):
        _core.lut_packed_bytes((2, 16, KQ4, 1), 16, 128)
    with pytest.raises(ValueError, match="4-bit k-quant sub-scales.*has_offset"):
        _core.lut_packed_bytes((2, 16, KQ4, 0), 16, 256)
    with pytest.raises(ValueError, match="ternary.*k-quant"):
        _core.lut_packed_bytes((5, 32, KQ8, 0), 16, 256)
    with pytest.raises(ValueError, match="scale_bytes 5 is not"):
        _core.lut_packed_bytes((4, 32, 5, 1), 16, 256)
    with pytest.raises(ValueError, match="scale_bytes 0 is not"):
        _core.lut_packed_bytes((4, 32, 0, 1), 16, 256)
    assert _core.lut_format_for_ggml(GGML["Q4_K"]) == (4, 32, 1, 1)
    assert _core.lut_format_for_ggml(GGML["Q4_K"], kq=False) == (4, 32, 4, 1)
    assert _core.lut_format_for_ggml(GGML["Q2_K"]) == (2, 16, KQ4, 1)
    assert _core.lut_format_for_ggml(GGML["Q2_K"], kq=False) == (2, 16, 4, 1)
    assert _core.lut_format_for_ggml(GGML["Q3_K"]) == (3, 16, KQ8, 0)
    assert _core.lut_format_for_ggml(GGML["Q3_K"], kq=False) == (3, 16, 4, 0)
    assert _core.lut_packed_bytes((4, 32, 1, 1), 17, 512) == 2 * 2 * 2368
    # per 16 rows x 256: GGUF Q2_K's 2.625 bits/weight; Q3_K symmetric 3.5625; the older layouts
    assert _core.lut_packed_bytes((2, 16, KQ4, 1), 16, 256) == 1344 == 16 * 84
    assert _core.lut_packed_bytes((3, 16, KQ8, 0), 16, 256) == 1824
    assert _core.lut_packed_bytes((2, 16, KQ8, 1), 16, 256) == 1600
    assert _core.lut_packed_bytes((4, 16, KQ8, 1), 16, 256) == 2624
    # 8-bit sub-scales without offset are signed (W1..W4); 3 planes at g16 in any encoding
    assert _core.lut_packed_bytes((3, 16, 2, 1), 16, 16) == 96 + 64
    assert _core.lut_packed_bytes((1, 16, KQ4, 1), 16, 256) == 16 * (32 + 16) + 64


def test_repack_to_unsupported_format(rng):
    blocks = random_blocks(rng, "Q2_K", 2, 256)
    with pytest.raises(ValueError, match="does not repack exactly"):
        _core.lut_repack_ggml(GGML["Q2_K"], np.ascontiguousarray(blocks).reshape(-1), 2, 256, fmt=(4, 16, KQ4, 1))
    with pytest.raises(ValueError, match="does not repack exactly"):  # Q3_K's sub-scales are 6 bits
        _core.lut_repack_ggml(GGML["Q3_K"], np.zeros(2 * 110, np.uint8), 2, 256, fmt=(3, 16, KQ4, 1))


def test_repack_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="no LUT repack"):
        _core.lut_format_for_ggml(8)  # Q8_0
    blocks = np.zeros(66 * 2, dtype=np.uint8)
    blocks[:64] = 0xFF  # code 3 is not ternary
    with pytest.raises(ValueError, match="code 3"):
        _core.lut_repack_ggml(GGML["TQ2_0"], blocks, 1, 512)
    with pytest.raises(ValueError, match="multiple of the group"):
        _core.lut_packed_bytes((2, 32, 2, 1), 4, 48)


def test_registry_has_lut_kernels():
    names = {k["name"] for k in _core.kernel_list()}
    for kind in KINDS.values():
        assert f"lut_gemv_{kind}_g4__ref" in names and f"lut_gemm_{kind}_g4__ref" in names
    assert "lut_build_g4__ref" in names
