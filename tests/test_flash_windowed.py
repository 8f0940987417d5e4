"""Windowed-sparse flash FFN (runtime/flash_ffn.cc, WINDOWED): with every bundle active the logits are
bit-identical to the resident runtime; with calibrated thresholds the cache (window length, slab
capacity, evictions, a slab smaller than the active set) never changes the result, only what is
read; bytes read equal the analytic count of loaded bundles."""
from __future__ import annotations

import numpy as np
import pytest

from lutllm.convert import calibrate_thresholds
from lutllm.engine import Engine

CALIB = ("The history of the city begins with a small fishing village on the river. Over the centuries "
         "merchants, scholars and craftsmen settled there, and the town grew into a busy port.")
EVAL = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside green leaves."


@pytest.fixture(scope="module")
def flash_pair(smollm2_flash):
    return smollm2_flash[:2]


def _steps(engine, toks, start):
    engine.reset()
    return [engine.eval(toks[:i])[-1].copy() for i in range(start, len(toks) + 1)]


def test_all_active_is_bit_identical(flash_pair):
    src, flash = flash_pair
    ref = Engine(src, n_ctx=128, n_threads=2, n_batch=8)
    toks = ref.tokenizer.encode(EVAL, add_special=True, parse_special=False)[:12]
    e = Engine(flash, n_ctx=128, n_threads=2, n_batch=8, flash_mode="windowed", flash_window=2)
    np.testing.assert_array_equal(e.eval(toks, all_logits=True), ref.eval(toks, all_logits=True))
    for got, want in zip(_steps(e, toks, 4), _steps(ref, toks, 4)):
        np.testing.assert_array_equal(got, want)
    info = e.flash_info()
    assert info["bundles_active"] == info["layers_run"] * info["bundles_per_layer"]


@pytest.fixture(scope="module")
def thresholds(flash_pair):
    _, flash = flash_pair
    e = Engine(flash, n_ctx=128, n_threads=2, flash_mode="windowed")
    toks = e.tokenizer.encode(CALIB, add_special=True, parse_special=False)
    return calibrate_thresholds(e, toks, 0.5)


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no read_bytes")


def _widened(lay, layer, j):
    """Bytes the reader issues for bundle j's up|down part (widened to 4096 alignment)."""
    n = lay.bundle_size(j)
    start = lay.layer_offset[layer] + j * lay.bundle_stride[layer] + lay.gate_bytes(layer, n)
    end = start + lay.gate_bytes(layer, n) + lay.down_bytes(layer, n)
    return -(-end // 4096) * 4096 - start // 4096 * 4096


def test_cache_never_changes_the_result_and_reads_match(flash_pair, thresholds):
    _, flash = flash_pair
    runs = {}
    for window, slab in ((1, 0), (4, 0), (8, 21), (2, 3)):
        e = Engine(flash, n_ctx=128, n_threads=2, flash_mode="windowed", flash_window=window)
        if slab:  # a slab smaller than the layer: LRU evictions of bundles still inside the window;
            # with 3 slots the active set is processed in several rounds through the slab
            e = Engine(flash, n_ctx=128, n_threads=2, flash_mode="windowed", flash_window=window,
                       mem_budget=_budget_for_slab(e, slab))
            assert e.memory_plan.slab_bundles == slab
        e.flash_set_thresholds(thresholds)
        toks = e.tokenizer.encode(EVAL, add_special=True, parse_special=False)[:12]
        e.flash_reset_stats()
        r0 = _read_bytes()
        out = _steps(e, toks, 1)
        read = _read_bytes() - r0
        info = e.flash_info()
        lay = e.flash_layout
        per_bundle = _widened(lay, 0, 0)
        assert all(_widened(lay, i, j) == per_bundle for i in range(lay.n_layer) for j in range(lay.n_bundles))
        assert info["bytes_read"] == info["bundles_loaded"] * per_bundle
        assert abs(read - info["bytes_read"]) <= 0.10 * info["bytes_read"], (read, info["bytes_read"])
        runs[(window, slab)] = (out, info)
    base_out, base = runs[(1, 0)]
    for key, (out, info) in runs.items():
        for a, b in zip(out, base_out):
            np.testing.assert_array_equal(a, b, err_msg=str(key))
        assert info["bundles_active"] == base["bundles_active"]
    total = base["layers_run"] * base["bundles_per_layer"]
    # the calibration text gave ~50 % of bundles; another text stays in a broad band around it
    assert 0.2 * total < base["bundles_active"] < 0.85 * total
    # a longer window re-reads less; a small slab evicts more
    assert runs[(4, 0)][1]["bundles_loaded"] < base["bundles_loaded"]
    assert runs[(8, 21)][1]["bundles_evicted"] > 0
    assert runs[(2, 3)][1]["bundles_loaded"] > runs[(4, 0)][1]["bundles_loaded"]
    # and the sparse result is not the dense one
    dense = Engine(flash, n_ctx=128, n_threads=2, flash_mode="windowed")
    assert not np.array_equal(_steps(dense, toks, len(toks))[0], base_out[-1])


def _budget_for_slab(e, slab):
    plan, lay = e.memory_plan, e.flash_layout
    per_slot = sum(-(-(lay.bundle_bytes(i, lay.bundle_neurons) - lay.gate_bytes(i, lay.bundle_neurons)) // 4096) * 4096
                   for i in range(lay.n_layer))
    fixed = plan.total - plan.slab_bundles * per_slot
    return fixed + slab * per_slot


def test_budget_and_argument_errors(flash_pair):
    _, flash = flash_pair
    probe = Engine(flash, n_ctx=64, n_threads=1, flash_mode="windowed")
    with pytest.raises(ValueError, match="too small for windowed mode"):
        Engine(flash, n_ctx=64, n_threads=1, flash_mode="windowed", mem_budget=_budget_for_slab(probe, 0))
    with pytest.raises(ValueError, match="thresholds for 30 layers"):
        probe.flash_set_thresholds([0.5])
    with pytest.raises(ValueError, match="window must be >= 1"):
        Engine(flash, n_ctx=64, n_threads=1, flash_mode="windowed", flash_window=0)
