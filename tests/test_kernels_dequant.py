"""Dequant kernels (native/ref, and any SIMD twins in the registry) vs gguf.quants.dequantize.

Bit-exact: the float32 results must have the same bits as the `gguf` package's numpy decoders.
Not a test of quantization quality: payloads are random bytes with finite fp16 scales, plus blocks
produced by gguf.quants.quantize where the package can quantize that type.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf import quants

from lutllm import _core

# (type, byte offsets of the fp16 scale fields inside one block)
FP16_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
    QT.TQ1_0: [52], QT.TQ2_0: [64],
}
QUANTIZABLE = {QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.TQ1_0, QT.TQ2_0, QT.BF16, QT.F16}


def dequant_kernels():
    out = []
    for k in _core.kernel_list():
        if k["op"] == "dequant":
            marks = [] if k["supported"] else [pytest.mark.skip(reason=f"CPU lacks {k['isa']}")]
            out.append(pytest.param(k["name"], QT(k["wtype"]), id=k["name"], marks=marks))
    return out


def random_finite_fp16(rng, n):
    h = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    bad = (h & 0x7C00) == 0x7C00                       # inf / NaN exponent
    h[bad] &= np.uint16(0xBFFF)                        # clear the top exponent bit: finite
    return h


def random_blocks(rng, qt, n_blocks):
    """Random payload bytes with finite fp16 scales (subnormals, zeros and signs included)."""
    if qt == QT.F32:
        v = rng.standard_normal(n_blocks).astype(np.float32) * np.float32(100)
        v[::7] = np.float32(1e-40)                     # a float32 subnormal
        return v.view(np.uint8)
    if qt == QT.F16:
        return random_finite_fp16(rng, n_blocks).view(np.uint8)
    if qt == QT.BF16:
        h = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
        h[(h & 0x7F80) == 0x7F80] &= np.uint16(0xBFFF)
        return h.view(np.uint8)
    _, type_size = _core.type_info(int(qt))[1:]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in FP16_FIELDS[qt]:
        raw[:, off:off + 2] = random_finite_fp16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def check_exact(name, qt, src, n):
    got = _core.run_dequant(name, src, n)
    want = quants.dequantize(src, qt).reshape(-1).astype(np.float32, copy=False)
    assert want.shape == got.shape == (n,)
    assert not np.isnan(want).any()
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert bad.size == 0, f"{name}: {bad.size} of {n} differ, first at {bad[0]}: {got[bad[0]]!r} vs {want[bad[0]]!r}"


@pytest.mark.parametrize("name,qt", dequant_kernels())
@pytest.mark.parametrize("n_blocks", [1, 3, 8, 33])
def test_dequant_random_blocks_bit_exact(name, qt, n_blocks):
    rng = np.random.default_rng(1000 * int(qt) + n_blocks)
    block_elems = _core.type_info(int(qt))[1]
    src = random_blocks(rng, qt, n_blocks)
    check_exact(name, qt, np.ascontiguousarray(src), n_blocks * block_elems)


@pytest.mark.parametrize("name,qt", [p for p in dequant_kernels() if p.values[1] in QUANTIZABLE])
def test_dequant_quantized_data_bit_exact(name, qt):
    rng = np.random.default_rng(int(qt))
    block_elems = _core.type_info(int(qt))[1]
    n = 4 * max(block_elems, 256)
    x = (rng.standard_normal(n) * rng.uniform(0.01, 3.0)).astype(np.float32)
    x[: n // 8] = 0.0                                  # all-zero blocks: d == 0
    src = np.ascontiguousarray(quants.quantize(x.reshape(1, n), qt).reshape(-1).view(np.uint8))
    check_exact(name, qt, src, n)
    if qt not in (QT.F16, QT.BF16):
        # coarse sanity: the decoded values are close to the input (quantization, not garbage)
        got = _core.run_dequant(name, src, n)
        assert np.max(np.abs(got - x)) <= 0.5 * np.max(np.abs(x))


def test_every_listed_type_has_a_ref_dequant():
    names = {k["name"] for k in _core.kernel_list() if k["op"] == "dequant" and k["isa"] == "ref"}
    for t in ["f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_K", "q3_K", "q4_K",
              "q5_K", "q6_K", "tq1_0", "tq2_0"]:
        assert f"dequant_{t}__ref" in names
