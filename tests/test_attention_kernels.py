"""Attention kernel (one query head over an fp16 KV cache, the registry's attn_head op): the scalar
twin against float64 numpy, every SIMD twin bit for bit against the scalar one (NEON under qemu)."""
import numpy as np
import pytest
from neon_check import run_neon_check

from lutllm import _core

KERNELS = [k for k in _core.kernel_list() if k["op"] == "attn_head"]
SIMD = [pytest.param(k["name"], id=k["name"], marks=[] if k["supported"] else [pytest.mark.skip(reason="CPU lacks ISA")])
        for k in KERNELS if k["isa"] != "ref"]
SHAPES = [(hd, n) for hd in (4, 8, 20, 64, 72, 128, 256) for n in (1, 2, 3, 5, 17, 300)]


def make_case(rng, hd, n, amp=1.0, extra=0):
    q = (rng.standard_normal(hd) * amp).astype(np.float32)
    k = rng.standard_normal((n, hd + extra)).astype(np.float16)
    v = rng.standard_normal((n, hd + extra)).astype(np.float16)
    return q, k.view(np.uint16), v.view(np.uint16)


def numpy_attention(q, k16, v16, scale):
    hd = q.shape[0]
    k = k16.view(np.float16)[:, :hd].astype(np.float64)
    v = v16.view(np.float16)[:, :hd].astype(np.float64)
    s = k @ q.astype(np.float64) * scale
    p = np.exp(s - s.max())
    return (p / p.sum()) @ v


@pytest.mark.parametrize("hd,n", SHAPES)
def test_ref_matches_float64(hd, n):
    rng = np.random.default_rng(hd * 1000 + n)
    q, k, v = make_case(rng, hd, n, extra=8)
    out = _core.run_attn_head("attn_head_f16__ref", q, k, v, 1.0 / np.sqrt(hd))
    want = numpy_attention(q, k, v, 1.0 / np.sqrt(hd))
    assert np.abs(out - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_peaked_softmax_is_finite_and_exact():
    """Scores far apart (one key dominates): no overflow, and the output is that key's value row."""
    rng = np.random.default_rng(1)
    q, k, v = make_case(rng, 64, 40, amp=200.0)
    out = _core.run_attn_head("attn_head_f16__ref", q, k, v, 1.0)
    s = k.view(np.float16).astype(np.float64) @ q.astype(np.float64)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, v.view(np.float16)[np.argmax(s)].astype(np.float32), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", SIMD)
@pytest.mark.parametrize("hd,n", SHAPES)
@pytest.mark.parametrize("amp", [0.1, 3.0, 40.0])
def test_simd_bit_exact_with_ref(name, hd, n, amp):
    rng = np.random.default_rng(hd * 7 + n)
    q, k, v = make_case(rng, hd, n, amp=amp, extra=(n % 3) * 8)
    got = _core.run_attn_head(name, q, k, v, 0.125)
    want = _core.run_attn_head("attn_head_f16__ref", q, k, v, 0.125)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_bad_arguments_are_errors():
    q, k, v = make_case(np.random.default_rng(0), 8, 3)
    with pytest.raises(TypeError, match="dtype"):
        _core.run_attn_head("attn_head_f16__ref", q, k.view(np.int16), v, 1.0)
    with pytest.raises(ValueError, match="same shape"):
        _core.run_attn_head("attn_head_f16__ref", q, k, v[:2], 1.0)
    with pytest.raises(ValueError, match="not attn_head"):
        _core.run_attn_head("lut_build_g4__ref", q, k, v, 1.0)


def test_neon_matches_ref_under_qemu(tmp_path):
    srcs = ["tests/cpp/attn_check.cc", "native/ref/attention.cc", "native/ref/activation.cc",
            "native/arm/attention_neon.cc", "native/arm/activation_neon.cc"]
    last = run_neon_check(tmp_path, "attn_check_neon", srcs, ["-DATTN_CHECK_FN=attn_head_f16__neon"])
    assert int(last.split()[0]) == 7 * 6 * 3, last
