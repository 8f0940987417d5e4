"""Matmul and activation-quantization kernels: SIMD twins vs their scalar refs, refs vs float64 math.

* Every SIMD Q8 matmul is bit-exact with its ref (native/ref/matmul_q8.cc defines the float order) over
  odd shapes, misaligned weight buffers and extreme codes (int16 saturation would show up there).
* The ref Q8 matmul is checked against float64 math on gguf-dequantized weights with a derived bound,
  and against the unquantized activations with the activation-quantization error added.
* quantize_act: SIMD == ref bit for bit, and the ref's codes equal gguf's Q8_0 quantizer (same rule).
* Float-weight matmuls (F32/F16/BF16, any ISA) vs float64 with the bound gamma_k * sum|w*x|.
* The aarch64 kernels (NEON, sdot) are built with the cross compiler and run under qemu
  (tests/cpp/q8_check.cc), bit-exact with the same refs.
Not a benchmark: no timings here.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from lutllm import _core
from neon_check import run_neon_check

U = 2.0 ** -24  # unit roundoff of float32
ACT = np.dtype([("d", "<f4"), ("s", "<f4"), ("qs", "i1", (32,))])
assert ACT.itemsize == 40

# type -> (byte offsets of fp16 scale fields, offset of the min field or None, offset of d)
FIELDS = {
    QT.Q4_0: ([0], None, 0), QT.Q4_1: ([0, 2], 2, 0), QT.Q5_0: ([0], None, 0), QT.Q5_1: ([0, 2], 2, 0),
    QT.Q8_0: ([0], None, 0), QT.Q4_K: ([0, 2], 2, 0), QT.Q5_K: ([0, 2], 2, 0), QT.Q6_K: ([208], None, 208),
}
KERNELS = _core.kernel_list()


def q8_kernels(isa_filter):
    out = []
    for k in KERNELS:
        if k["op"] != "matmul_q8" or not isa_filter(k["isa"]):
            continue
        marks = [] if k["supported"] else [pytest.mark.skip(reason=f"CPU lacks {k['isa']}")]
        out.append(pytest.param(k["name"], QT(k["wtype"]), id=k["name"], marks=marks))
    return out


def ref_name(qt):
    return f"matmul_{qt.name.lower().replace('_k', '_K')}_q8__ref"


def block_info(qt):
    _, elems, size = _core.type_info(int(qt))
    return elems, size


def random_weights(rng, qt, rows, k, extreme=False):
    """rows x k weights of type qt as raw bytes: random payload, finite fp16 scales in +-0.05."""
    elems, size = block_info(qt)
    nb = k // elems
    if extreme:  # codes at their limits: all-ones / all-zero bytes and 0x80 (Q8_0: -128)
        raw = rng.choice(np.array([0x00, 0xFF, 0x80, 0x7F], dtype=np.uint8), size=(rows, nb, size))
    else:
        raw = rng.integers(0, 256, size=(rows, nb, size), dtype=np.uint8)
    for off in FIELDS[qt][0]:
        v = rng.uniform(-0.05, 0.05, size=(rows, nb)).astype(np.float16)
        raw[:, :, off:off + 2] = v.view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(-1)


def misaligned(buf, offset):
    """The same bytes starting `offset` bytes past an aligned address."""
    tmp = np.zeros(buf.size + 64, dtype=np.uint8)
    start = (-tmp.ctypes.data) % 64 + offset
    tmp[start:start + buf.size] = buf
    out = tmp[start:start + buf.size]
    assert out.ctypes.data % 64 == offset
    return out


def act_blocks(rng, n_tok, k, extreme=False):
    """ActQ8 rows built directly: |codes| <= 127 (the ActQ8 contract), s = d * sum(codes)."""
    a = np.zeros((n_tok, k // 32), dtype=ACT)
    if extreme:
        sign = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_tok, k // 32, 1))
        pattern = rng.choice(np.array([-127, 127], dtype=np.int8), size=(n_tok, k // 32, 32))
        a["qs"] = np.where(rng.random((n_tok, k // 32, 1)) < 0.5, sign * np.int8(127), pattern)
    else:
        a["qs"] = rng.integers(-127, 128, size=(n_tok, k // 32, 32), dtype=np.int8)
    a["d"] = rng.uniform(0.001, 0.1, size=(n_tok, k // 32)).astype(np.float32)
    a["s"] = a["d"] * a["qs"].astype(np.int32).sum(axis=-1).astype(np.float32)
    return a


def act_bytes(a):
    return np.ascontiguousarray(a).view(np.uint8).reshape(a.shape[0], -1)


def quantized_acts(x):
    return np.ascontiguousarray(_core.run_quantize_act("quantize_act_q8__ref", x)).view(ACT)


def dequant_acts(a):
    """float64 values d * q of ActQ8 rows: (n_tok, k)"""
    return (a["d"][..., None].astype(np.float64) * a["qs"].astype(np.float64)).reshape(a.shape[0], -1)


def assert_same_bits(got, want, what):
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{what}: {bad.size} of {got.size} differ, first at {bad[0]}: {got.flat[bad[0]]!r} vs {want.flat[bad[0]]!r}"


# ---- SIMD == ref, bit for bit ---------------------------------------------------------------------

def shapes_for(qt):
    """(rows, k, n_tok, weight offset): rows 1..17 and larger, k = 1.. several blocks, odd n_tok."""
    elems, _ = block_info(qt)
    ks = [32, 96, 160, 576] if elems == 32 else [256, 512, 768]
    toks = [1, 2, 3, 5, 8, 17]
    out = []
    for rows in range(1, 18):
        out.append((rows, ks[rows % len(ks)], toks[rows % len(toks)], rows % 4))
    out += [(64, ks[-1], 1, 1), (100, ks[1], 3, 2), (100, ks[0], 17, 3), (33, ks[-1], 8, 0), (24, ks[1], 64, 1)]
    return out


@pytest.mark.parametrize("name,qt", q8_kernels(lambda isa: isa != "ref"))
def test_simd_matmul_bit_exact_with_ref(name, qt):
    rng = np.random.default_rng(int(qt) * 7919 + len(name))
    for rows, k, n_tok, off in shapes_for(qt):
        w = misaligned(random_weights(rng, qt, rows, k), off)
        xq = act_bytes(act_blocks(rng, n_tok, k))
        want = _core.run_matmul_q8(ref_name(qt), w, rows, k, xq)
        got = _core.run_matmul_q8(name, w, rows, k, xq)
        assert_same_bits(got, want, f"{name} rows={rows} k={k} n_tok={n_tok} off={off}")


@pytest.mark.parametrize("name,qt", q8_kernels(lambda isa: isa != "ref"))
def test_simd_matmul_extreme_codes_bit_exact(name, qt):
    """Max-magnitude codes on both sides: any int16 saturation or overflow would break exactness."""
    rng = np.random.default_rng(int(qt) + 17)
    elems, _ = block_info(qt)
    for rows, k, n_tok in [(9, 4 * max(elems, 64), 1), (17, 2 * elems, 5), (8, 8 * elems, 2), (16, elems, 17)]:
        w = random_weights(rng, qt, rows, k, extreme=True)
        a = act_blocks(rng, n_tok, k, extreme=True)
        want = _core.run_matmul_q8(ref_name(qt), w, rows, k, act_bytes(a))
        got = _core.run_matmul_q8(name, w, rows, k, act_bytes(a))
        assert_same_bits(got, want, f"{name} extreme rows={rows} k={k} n_tok={n_tok}")
        # the ref itself must be right here too (checked against float64 below)
        check_ref_against_float64(qt, w, rows, k, a, want)



def q6_k_max_blocks(rng, rows, k):
    """Q6_K rows whose every 32-element block is at an integer extreme: all codes -32 (ql = qh = 0) or
    all +31 (ql = qh = 0xFF), each 16-element scale -128 or 127, and d = 1 or -1 (large, finite)."""
    nsb = k // 256
    raw = np.zeros((rows, nsb, 210), dtype=np.uint8)
    # codes per 32-element block: which blocks are all +31 (the rest all -32)
    high = rng.random((rows, nsb, 8)) < 0.5
    for j in range(8):  # block j: ql bytes 64*(j//4) + 32*(j%2) .. +31 (nibble (j%4)//2), qh 128 + 32*(j//4)
        h, q = j // 4, j % 4
        lo = raw[:, :, 64 * h + 32 * (q % 2):64 * h + 32 * (q % 2) + 32]
        lo |= np.where(high[:, :, j, None], np.uint8(0x0F << (4 * (q // 2))), np.uint8(0))
        hb = raw[:, :, 128 + 32 * h:128 + 32 * h + 32]
        hb |= np.where(high[:, :, j, None], np.uint8(3 << (2 * q)), np.uint8(0))
    raw[:, :, 192:208] = rng.choice(np.array([-128, 127], dtype=np.int8), size=(rows, nsb, 16)).view(np.uint8)
    d = rng.choice(np.array([1.0, -1.0], dtype=np.float16), size=(rows, nsb))
    raw[:, :, 208:210] = d.view(np.uint8).reshape(rows, nsb, 2)
    return raw.reshape(-1)


@pytest.mark.parametrize("name,qt", [p for p in q8_kernels(lambda isa: True) if p.values[1] == QT.Q6_K])
def test_q6_k_max_magnitude_bit_exact(name, qt):
    """Q6_K at the integer limits: |P_b| = 32 * 32 * 127 * 128 (just under 2^24, exact in float) when a
    block's codes are all -32, its scales -128 and the activations all 127 (or the signs flipped). The
    int16 pair sums, the int32 partial sums and the scale products of every kernel must neither saturate
    nor wrap: SIMD == ref bit for bit, and the ref == float64 within its bound (so the ref did not wrap)."""
    rng = np.random.default_rng(606)
    for rows, k, n_tok in [(8, 256, 1), (17, 1536, 1), (16, 512, 3), (9, 768, 17)]:
        w = q6_k_max_blocks(rng, rows, k)
        a = np.zeros((n_tok, k // 32), dtype=ACT)
        # whole blocks of +127 or -127 (the largest |P_b|), a few mixed blocks, and large d
        sign = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_tok, k // 32, 1))
        a["qs"] = sign * np.int8(127)
        a["qs"][:, ::5] = rng.choice(np.array([-127, 127], dtype=np.int8), size=a["qs"][:, ::5].shape)
        a["d"] = rng.choice(np.array([1e3, 1.0], dtype=np.float32), size=(n_tok, k // 32))
        a["s"] = a["d"] * a["qs"].astype(np.int32).sum(axis=-1).astype(np.float32)
        want = _core.run_matmul_q8(ref_name(qt), w, rows, k, act_bytes(a))
        if name != ref_name(qt):
            got = _core.run_matmul_q8(name, w, rows, k, act_bytes(a))
            assert_same_bits(got, want, f"{name} max-magnitude rows={rows} k={k} n_tok={n_tok}")
        check_ref_against_float64(qt, w, rows, k, a, want)
    # the extreme block itself, one row and one block: y = P * d * dx exactly
    w = q6_k_max_blocks(np.random.default_rng(0), 1, 256).reshape(1, 1, 210)
    w[:, :, :192] = 0
    w[:, :, 192:208] = np.int8(-128).view(np.uint8)
    w[:, :, 208:210] = np.array([1.0], dtype=np.float16).view(np.uint8)
    a = np.zeros((1, 8), dtype=ACT)
    a["qs"] = 127
    a["d"] = 1.0
    a["s"] = 127.0 * 32
    y = _core.run_matmul_q8(name, w.reshape(-1), 1, 256, act_bytes(a))
    assert y[0, 0] == np.float32(8 * 32 * 32 * 127 * 128)

# ---- ref vs float64 -------------------------------------------------------------------------------

def parts(qt, w, rows, k):
    """gguf-dequantized weights and the magnitudes of their scale part and offset part, per element."""
    elems, size = block_info(qt)
    blocks = w.reshape(rows, k // elems, size)
    wg = quants.dequantize(blocks.reshape(rows, -1), qt).astype(np.float64)
    _, min_off, d_off = FIELDS[qt]
    if min_off is None:
        return wg, np.abs(wg), np.zeros_like(wg)
    no_min = blocks.copy()
    no_min[:, :, min_off:min_off + 2] = 0
    no_scale = blocks.copy()
    no_scale[:, :, d_off:d_off + 2] = 0
    main = quants.dequantize(no_min.reshape(rows, -1), qt).astype(np.float64)
    offs = quants.dequantize(no_scale.reshape(rows, -1), qt).astype(np.float64)
    return wg, np.abs(main), np.abs(offs)


def check_ref_against_float64(qt, w, rows, k, a, y):
    """Bound (derivation): per (row, token) the ref computes, over nb = k/32 blocks,
        acc = fma-chain of float(P_b) * fl(D_b * dx_b)   (P_b exact),  summ = fma-chain of M_b * s_b,
    y = fl(acc + summ), with s_b = fl(dx_b * sum q). Each exact term T_b = P_b D_b dx_b (or M_b dx_b sum q)
    passes through at most nb + 2 roundings (its scale product or s_b, nb chain steps, the final add), so
    |y - Y| <= gamma_{nb+2} * sum_e (|main_e| + |off_e|) * |xdq_e|, where Y is the exact product of the
    exact weights with the dequantized activations xdq. gguf's dequantized weights differ from the exact
    ones by at most u * (|main_e| + |off_e|) (one rounding in d*q + m or (d*sc)*q - dm; none for the
    other types), and the float64 sum adds < k * 2^-53 relative. Total, with margin:
        |y - sum_e wg_e xdq_e| <= (nb + 4) * u * sum_e (|main_e| + |off_e|) |xdq_e|.
    """
    nb = k // 32
    wg, main, offs = parts(qt, w, rows, k)
    xdq = dequant_acts(a)
    want = xdq @ wg.T
    mag = np.abs(xdq) @ (main + offs).T
    bound = (nb + 4) * U * mag + 1e-30
    err = np.abs(y.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"{qt.name}: err {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"
    return wg, xdq


@pytest.mark.parametrize("name,qt", q8_kernels(lambda isa: isa == "ref"))
def test_ref_matmul_against_float64(name, qt):
    rng = np.random.default_rng(int(qt) + 1)
    elems, _ = block_info(qt)
    for rows, k, n_tok in [(5, elems, 1), (13, 3 * elems, 3), (32, 4 * max(elems, 64), 2)]:
        w = random_weights(rng, qt, rows, k)
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        x[:, :32] *= 100.0                      # blocks of very different scale
        a = quantized_acts(x)
        y = _core.run_matmul_q8(name, w, rows, k, act_bytes(a))
        wg, xdq = check_ref_against_float64(qt, w, rows, k, a, y)
        # against the unquantized activations: |x - d*q| <= d * (1/2 + 255u) per element (q rounds
        # fl(x * fl(1/d)), |x/d| <= 127(1+u)), so the product moves by at most sum_e |w_e| d_e (1/2 + 256u)
        d_e = np.repeat(a["d"].astype(np.float64), 32, axis=-1)
        assert np.all(np.abs(x - xdq) <= d_e * (0.5 + 255 * U))
        _, main, offs = parts(qt, w, rows, k)
        bound = (k // 32 + 4) * U * (np.abs(xdq) @ (main + offs).T) + (d_e * (0.5 + 256 * U)) @ (main + offs).T
        err = np.abs(y - x.astype(np.float64) @ wg.T)
        assert np.all(err <= bound + 1e-30)


def test_every_simd_type_has_a_ref():
    refs = {k["wtype"] for k in KERNELS if k["op"] == "matmul_q8" and k["isa"] == "ref"}
    for k in KERNELS:
        if k["op"] == "matmul_q8":
            assert k["wtype"] in refs, k["name"]


# ---- activation quantization ----------------------------------------------------------------------

def act_inputs(rng):
    x = rng.standard_normal((7, 256)).astype(np.float32) * np.float32(3)
    x[1] *= np.float32(1e-30)                            # tiny blocks
    x[2, :32] = 0.0                                      # d == 0
    x[3] = np.tile(np.arange(32, dtype=np.float32) * np.float32(0.5) - 8, 8)  # exact halves after scaling
    x[3, :32] *= np.float32(127 / 8)
    x[4] *= np.float32(1e30)                             # huge (finite) blocks
    x[5, ::3] = -x[5, ::3]
    x[6] = np.float32(-0.0)
    return x


@pytest.mark.parametrize("name", [pytest.param(k["name"], marks=[] if k["supported"] else [pytest.mark.skip(reason=f"CPU lacks {k['isa']}")])
                                  for k in KERNELS if k["op"] == "quant_act" and k["isa"] != "ref"])
def test_simd_quantize_act_bit_exact(name):
    rng = np.random.default_rng(5)
    for x in [act_inputs(rng), rng.standard_normal((3, 32)).astype(np.float32), rng.standard_normal((1, 4096)).astype(np.float32)]:
        want = _core.run_quantize_act("quantize_act_q8__ref", x)
        got = _core.run_quantize_act(name, x)
        assert np.array_equal(got, want), name


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # gguf's fp16 d of the 1e30 rows
def test_ref_quantize_act_matches_gguf_q8_0_rule():
    """Same rule as gguf's Q8_0 quantizer (d = amax/127, q = round-half-away(x * (1/d))): equal codes;
    d and s as float32 (gguf stores d as fp16, so d is compared with numpy's float32 arithmetic)."""
    rng = np.random.default_rng(6)
    x = act_inputs(rng)
    a = quantized_acts(x)
    q8 = quants.quantize(x, QT.Q8_0).reshape(x.shape[0], -1, 34)
    assert np.array_equal(a["qs"], q8[:, :, 2:].view(np.int8))
    blocks = x.reshape(x.shape[0], -1, 32)
    d = (np.abs(blocks).max(axis=-1) / np.float32(127)).astype(np.float32)
    assert np.array_equal(a["d"].view(np.uint32), d.view(np.uint32))
    s = d * a["qs"].astype(np.int32).sum(axis=-1).astype(np.float32)
    assert np.array_equal(a["s"].view(np.uint32), s.view(np.uint32))
    assert np.abs(a["qs"].astype(np.int32)).max() <= 127


# ---- float weights ----------------------------------------------------------------------------------

def float_kernels():
    out = []
    for k in KERNELS:
        if k["op"] == "matmul_f32":
            marks = [] if k["supported"] else [pytest.mark.skip(reason=f"CPU lacks {k['isa']}")]
            out.append(pytest.param(k["name"], QT(k["wtype"]), id=k["name"], marks=marks))
    return out


@pytest.mark.parametrize("name,qt", float_kernels())
def test_float_matmul_against_float64(name, qt):
    """Weights convert to float32 exactly; any summation order of k products with one rounding each
    (or fused) is within gamma_k * sum|w x| of the exact dot, gamma_k = k u / (1 - k u)."""
    rng = np.random.default_rng(int(qt) + 3)
    np_type = {QT.F32: np.float32, QT.F16: np.float16, QT.BF16: None}[qt]
    for rows, k, n_tok, off in [(1, 1, 1, 0), (3, 7, 2, 1), (17, 33, 3, 2), (9, 100, 5, 3), (40, 257, 8, 1), (5, 1024, 17, 2)]:
        wf = rng.standard_normal((rows, k)).astype(np.float32)
        if qt == QT.BF16:
            raw = quants.quantize(wf, QT.BF16).reshape(-1)
        else:
            raw = wf.astype(np_type).view(np.uint8).reshape(-1)
        w64 = quants.dequantize(raw.reshape(rows, -1), qt).astype(np.float64)
        x = rng.standard_normal((n_tok, k)).astype(np.float32)
        y = _core.run_matmul_f32(name, misaligned(raw, off), rows, k, x)
        want = x.astype(np.float64) @ w64.T
        gamma = k * U / (1 - k * U)
        bound = gamma * (np.abs(x.astype(np.float64)) @ np.abs(w64).T) + 1e-30
        assert np.all(np.abs(y - want) <= bound), name


def test_neon_int8_matmuls_bit_exact_under_qemu(tmp_path):
    """Every int8-path type x ActQ8 on NEON (smull) and sdot: every case of tests/cpp/q8_check.cc (rows
    1..9, 1..9 tokens, misaligned weights, extreme codes and scales) equal to the ref bit for bit."""
    srcs = ["tests/cpp/q8_check.cc", "native/ref/matmul_q8.cc", "native/ref/quant_act.cc",
            "native/arm/matmul_q8_neon.cc", "native/arm/matmul_q8_dotprod.cc"]
    # one -march for the whole check (the release build gives +dotprod to *_dotprod.cc only); qemu runs sdot
    last = run_neon_check(tmp_path, "q8_check_neon", srcs, ["-march=armv8.2-a+dotprod"])
    assert int(last.split()[0]) == 8 * 2 * 9 * 7 * 2, last
