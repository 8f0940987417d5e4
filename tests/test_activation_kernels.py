"""SwiGLU gate kernel (the registry's silu_mul op, a = silu(a) * b with the fixed exp sequence of
kernels.h): the scalar twin against float64 numpy, every SIMD twin bit for bit against the scalar one
(NEON under qemu), on random and special inputs."""
import platform

import numpy as np
import pytest
from neon_check import run_neon_check

from lutllm import _core

KERNELS = [k for k in _core.kernel_list() if k["op"] == "silu_mul"]
SIMD = [pytest.param(k["name"], id=k["name"], marks=[] if k["supported"] else [pytest.mark.skip(reason="CPU lacks ISA")])
        for k in KERNELS if k["isa"] != "ref"]
SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 86.9, 87.0, 87.5, 88.0, 88.5, 100.0, -86.9, -87.0, -87.5, -88.0,
                    -88.5, -100.0, 1e30, -1e30, np.inf, -np.inf, np.nan], dtype=np.float32)


def cases(seed, n, amp):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * amp).astype(np.float32)
    a[4::5] = np.resize(SPECIAL, a[4::5].size)
    return a, rng.standard_normal(n).astype(np.float32)


def test_registry_has_the_scalar_twin_and_the_simd_ones():
    names = {k["name"] for k in KERNELS}
    simd = {"x86_64": "silu_mul__avx2", "aarch64": "silu_mul__neon"}.get(platform.machine())
    assert "silu_mul__ref" in names and (simd is None or simd in names)


@pytest.mark.parametrize("amp", [0.5, 4.0, 30.0])
def test_ref_matches_float64(amp):
    """Within 4e-7 relative (the kernel's exp is within 2 ulp, then one division and one product);
    where x < -87 the clamp leaves |silu(x) * b| below 1e-35 either way."""
    rng = np.random.default_rng(int(amp * 10))
    a = (rng.standard_normal(200_000) * amp).astype(np.float32)
    a[:4] = [-87.0, 88.0, -120.0, 150.0]
    b = rng.standard_normal(a.size).astype(np.float32)
    got = _core.run_silu_mul("silu_mul__ref", a, b).astype(np.float64)
    x = a.astype(np.float64)
    with np.errstate(over="ignore"):
        want = x / (1.0 + np.exp(-x)) * b
    tiny = x < -87
    assert np.all(np.abs(got[tiny] - want[tiny]) < 1e-35)
    rel = np.abs(got[~tiny] - want[~tiny]) / np.maximum(np.abs(want[~tiny]), 1e-37)
    assert rel.max() < 4e-7, rel.max()


def test_special_values():
    a = np.array([0.0, -0.0, np.inf, np.nan, 1e30, -1e30, 100.0], dtype=np.float32)
    got = _core.run_silu_mul("silu_mul__ref", a, np.ones_like(a))
    assert got[0] == 0 and got[1] == 0 and got[2] == np.inf and np.isnan(got[3])
    assert got[4] == np.float32(1e30) and abs(got[5]) < 1e-7 and got[6] == np.float32(100.0)


@pytest.mark.parametrize("name", SIMD)
@pytest.mark.parametrize("n", list(range(0, 20)) + [8960, 100_003])
def test_simd_bit_exact_with_ref(name, n):
    for amp in (1.0, 12.0, 60.0):
        a, b = cases(n * 3 + int(amp), n, amp)
        for off in (0, 1):  # a misaligned start
            got = _core.run_silu_mul(name, a[off:], b[off:])
            want = _core.run_silu_mul("silu_mul__ref", a[off:], b[off:])
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (name, n, amp, off)


def test_bad_arguments_are_errors():
    a = np.ones(4, dtype=np.float32)
    with pytest.raises(TypeError, match="dtype"):
        _core.run_silu_mul("silu_mul__ref", a.astype(np.float64), a)
    with pytest.raises(ValueError, match="same length"):
        _core.run_silu_mul("silu_mul__ref", a, a[:3])
    with pytest.raises(ValueError, match="not silu_mul"):
        _core.run_silu_mul("attn_head_f16__ref", a, a)


def test_neon_matches_ref_under_qemu(tmp_path):
    last = run_neon_check(tmp_path, "silu_check_neon", ["tests/cpp/silu_check.cc", "native/ref/activation.cc",
                                                        "native/arm/activation_neon.cc"], ["-DSILU_CHECK_FN=silu_mul__neon"])
    assert int(last.split()[0]) == 41 * 3 * 3, last
