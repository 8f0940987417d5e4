"""Low-rank gate predictor of the flash layout (convert_flash(predictor_rank=...), windowed mode):
the stored Q8_0 factors against a numpy SVD of the dequantized gate, the runtime's predicted bundle
scores against numpy, bit identity with every bundle active, the cache never changing a result and
reads matching whole bundles, plan_memory counting the predictor instead of the gate, and the
predictor finding most of the truly active bundles on a text it was not calibrated on."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from lutllm import _core
from lutllm.convert import (FlashLayout, calibrate_thresholds, convert_flash, default_predictor_rank, plan_memory,
                            predictor_recall)
from lutllm.engine import Engine
from lutllm.gguf_file import GGUFFile

CALIB = ("The history of the city begins with a small fishing village on the river. Over the centuries "
         "merchants, scholars and craftsmen settled there, and the town grew into a busy port.")
EVAL = "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside green leaves."
Q8 = gguf.GGMLQuantizationType.Q8_0


@pytest.fixture(scope="module")
def pred_file(smollm2_path, tmp_path_factory):
    """SmolLM2 with neurons ordered on CALIB and the default predictor: (source, flash path, layout)."""
    out = tmp_path_factory.mktemp("pred") / "smol.pred.gguf"
    lay = convert_flash(smollm2_path, out, progress=False, order_text=CALIB)
    return smollm2_path, str(out), lay


def _dequant(g: GGUFFile, name: str) -> np.ndarray:
    t = g.tensors[name]
    raw = np.ascontiguousarray(g.tensor_data(name)).view(np.uint8).reshape(-1)
    return np.asarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t.ggml_type)),
                      np.float64).reshape(t.shape[1], t.shape[0])


def _factors(path: str, lay: FlashLayout, layer: int, source_order: bool):
    g = GGUFFile(path)
    a = _dequant(g, f"blk.{layer}.ffn_pred_a.weight")
    b = _dequant(g, f"blk.{layer}.ffn_pred_b.weight")
    if source_order and lay.unit_order:  # file unit u holds source unit unit_order[u]
        u = lay.unit_neurons
        src = np.empty_like(a)
        src.reshape(lay.d_ff // u, u, -1)[np.asarray(lay.unit_order[layer])] = a.reshape(lay.d_ff // u, u, -1)
        a = src
    return a, b


def test_factors_are_a_truncated_svd_of_the_gate(pred_file):
    src, flash, lay = pred_file
    r = lay.predictor_rank
    assert r == default_predictor_rank(lay.d_model) and lay.unit_order
    g = GGUFFile(src)
    for layer in (0, lay.n_layer // 2, lay.n_layer - 1):
        w = _dequant(g, f"blk.{layer}.ffn_gate.weight")
        a, b = _factors(flash, lay, layer, source_order=True)
        assert a.shape == (lay.d_ff, r) and b.shape == (r, lay.d_model)
        s = np.linalg.svd(w, compute_uv=False)
        best = np.sqrt((s[r:] ** 2).sum())  # Eckart-Young: no rank-r matrix is closer
        err = np.linalg.norm(w - a @ b)
        assert 0.999 * best <= err <= 1.02 * best, (layer, err, best)
        # and it is the top-r subspace: the leading singular values are reproduced
        np.testing.assert_allclose(np.linalg.svd(a @ b, compute_uv=False)[:r], s[:r], rtol=0.02)


def _record(e: Engine, toks):
    _core.model_flash_record_scores(e._model, True, True)
    try:
        e.reset()
        e.eval(list(toks))
        return (_core.model_flash_take_scores(e._model), _core.model_flash_take_scores(e._model, exact=True),
                _core.model_flash_take_inputs(e._model))
    finally:
        _core.model_flash_record_scores(e._model, False)


def test_predicted_scores_match_numpy_and_exact_scores_match_the_gate(pred_file):
    src, flash, lay = pred_file
    e = Engine(flash, n_ctx=128, n_threads=2, n_batch=8, flash_mode="windowed")
    assert e.flash_info()["predictor"]
    toks = e.tokenizer.encode(EVAL, add_special=True, parse_special=False)[:12]
    pred, exact, xs = _record(e, toks)
    nb, gn = lay.n_bundles, lay.bundle_neurons
    for layer in (0, lay.n_layer - 1):
        a, b = _factors(flash, lay, layer, source_order=False)
        x = np.asarray(xs[layer], np.float64).reshape(len(toks), lay.d_model)
        gh = x @ b.T @ a.T
        want = np.abs(gh / (1 + np.exp(-gh))).reshape(len(toks), nb, gn).max(2)
        got = np.asarray(pred[layer]).reshape(len(toks), nb)
        # the runtime quantizes activations to int8 for the Q8_0 factors: a small relative error
        assert np.abs(got - want).max() <= 0.03 * want.max(), (layer, np.abs(got - want).max(), want.max())
    # with every bundle active the exact scores come from the bundles' own gate rows (file order)
    g = GGUFFile(src)
    u = lay.unit_neurons
    for layer in range(lay.n_layer):
        w = _dequant(g, f"blk.{layer}.ffn_gate.weight")
        w = w.reshape(lay.d_ff // u, u, -1)[np.asarray(lay.unit_order[layer])].reshape(lay.d_ff, -1)
        x = np.asarray(xs[layer], np.float64).reshape(len(toks), lay.d_model)
        gx = x @ w.T
        want = np.abs(gx / (1 + np.exp(-gx))).reshape(len(toks), nb, gn).max(2)
        got = np.asarray(exact[layer]).reshape(len(toks), nb)
        assert np.abs(got - want).max() <= 0.03 * want.max(), (layer, np.abs(got - want).max(), want.max())


def test_all_active_is_bit_identical(pred_file):
    src, flash, _ = pred_file
    ref = Engine(src, n_ctx=128, n_threads=2, n_batch=8)
    toks = ref.tokenizer.encode(EVAL, add_special=True, parse_special=False)[:12]
    e = Engine(flash, n_ctx=128, n_threads=2, n_batch=8, flash_mode="windowed", flash_window=2)
    np.testing.assert_array_equal(e.eval(toks, all_logits=True), ref.eval(toks, all_logits=True))
    e.reset()
    ref.reset()
    for i in range(4, len(toks) + 1):
        np.testing.assert_array_equal(e.eval(toks[:i])[-1], ref.eval(toks[:i])[-1])
    info = e.flash_info()
    assert info["predictor"] and info["bundles_active"] == info["layers_run"] * info["bundles_per_layer"]


def _read_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no read_bytes")


def _slot_bytes(lay: FlashLayout) -> int:
    return sum(-(-lay.bundle_bytes(i, lay.bundle_neurons) // 4096) * 4096 for i in range(lay.n_layer))


def test_cache_never_changes_the_result_and_reads_whole_bundles(pred_file):
    _, flash, lay = pred_file
    probe = Engine(flash, n_ctx=128, n_threads=2, flash_mode="windowed")
    thr = calibrate_thresholds(probe, probe.tokenizer.encode(CALIB, add_special=True, parse_special=False), 0.5)
    fixed = probe.memory_plan.total - probe.memory_plan.slab_bundles * _slot_bytes(lay)
    del probe
    runs = {}
    for window, slab in ((1, 0), (4, 0), (2, 3)):
        budget = fixed + slab * _slot_bytes(lay) if slab else None
        e = Engine(flash, n_ctx=128, n_threads=2, flash_mode="windowed", flash_window=window, mem_budget=budget)
        assert e.memory_plan.slab_bundles == (slab or lay.n_bundles)
        e.flash_set_thresholds(thr)
        toks = e.tokenizer.encode(EVAL, add_special=True, parse_special=False)[:12]
        e.flash_reset_stats()
        r0 = _read_bytes()
        e.reset()
        out = [e.eval(toks[:i])[-1].copy() for i in range(1, len(toks) + 1)]
        read = _read_bytes() - r0
        info = e.flash_info()
        # a miss reads the whole bundle [gate|up|down]: one aligned stride
        assert all(-(-lay.bundle_bytes(i, lay.bundle_size(j)) // 4096) * 4096 == lay.bundle_stride[0]
                   for i in range(lay.n_layer) for j in range(lay.n_bundles))
        assert info["bytes_read"] == info["bundles_loaded"] * lay.bundle_stride[0]
        assert abs(read - info["bytes_read"]) <= 0.10 * info["bytes_read"], (read, info["bytes_read"])
        runs[(window, slab)] = (out, info)
    base_out, base = runs[(1, 0)]
    for key, (out, info) in runs.items():
        for a, b in zip(out, base_out):
            np.testing.assert_array_equal(a, b, err_msg=str(key))
        assert info["bundles_active"] == base["bundles_active"]
    total = base["layers_run"] * base["bundles_per_layer"]
    assert 0.2 * total < base["bundles_active"] < 0.85 * total
    assert runs[(4, 0)][1]["bundles_loaded"] < base["bundles_loaded"]
    assert runs[(2, 3)][1]["bundles_loaded"] > runs[(4, 0)][1]["bundles_loaded"]


def test_plan_memory_counts_the_predictor_not_the_gate(pred_file, smollm2_flash):
    _, flash, lay = pred_file
    e = Engine(flash, n_ctx=64, n_threads=1, flash_mode="windowed")
    est, plan = e.memory_estimate, e.memory_plan
    pbytes = sum(GGUFFile(flash).tensors[f"blk.{i}.ffn_pred_{m}.weight"].nbytes
                 for i in range(lay.n_layer) for m in "ab")
    assert lay.predictor_bytes == pbytes > 0
    # dense and resident never read the predictor: it is not in their resident part
    dense = plan_memory(lay, est, None, "dense")
    assert plan.resident == dense.resident + pbytes
    down_max = max(lay.down_bytes(i, lay.d_ff) for i in range(lay.n_layer))
    assert plan.ffn_memory == down_max + lay.n_bundles * _slot_bytes(lay)
    # the smallest budget: one whole-bundle slot per layer; a byte less says so, naming the minimum
    minimum = plan.total - (lay.n_bundles - 1) * _slot_bytes(lay)
    assert plan_memory(lay, est, minimum, "windowed").slab_bundles == 1
    with pytest.raises(ValueError, match=f"at least {minimum} bytes .*gate predictor {pbytes}"):
        plan_memory(lay, est, minimum - 1, "windowed")
    # the same layout without a predictor keeps every gate row resident: a larger minimum
    _, _, plain = smollm2_flash
    gates = sum(lay.n_bundles * lay.gate_bytes(i, lay.bundle_neurons) for i in range(lay.n_layer))
    with pytest.raises(ValueError, match="resident gate"):
        plan_memory(plain, est, minimum, "windowed")
    assert gates > 3 * pbytes


def test_predictor_finds_most_active_bundles_on_an_unseen_text(pred_file):
    _, flash, _ = pred_file
    e = Engine(flash, n_ctx=256, n_threads=2, n_batch=32, flash_mode="windowed")
    text = (EVAL + " Rivers carry sediment from the mountains to the sea, where it settles into deltas. "
            "Engineers design bridges to carry loads safely across wide valleys and fast water.")
    pred, exact, _ = _record(e, e.tokenizer.encode(text, add_special=True, parse_special=False))
    recall = predictor_recall(exact, pred, 0.5)
    # chance (a random half of the bundles) finds half of them
    assert recall > 0.62, recall


@pytest.mark.slow
def test_qwen15_windowed_fits_half_its_size(qwen15_path, tmp_path):
    """The issue's budget: Qwen2.5-Coder-1.5B at 50 % of its file size runs windowed once the gate is
    replaced by the predictor (the resident gate alone needs more), with a slab of a fifth of the
    bundles per layer or more."""
    import os

    from lutllm.arch import model_config
    from lutllm.convert import flash_shape_view
    from lutllm.memory import estimate_memory

    out = tmp_path / "q15.flash.gguf"
    lay = convert_flash(qwen15_path, out, progress=False, predictor_rank=128)
    g = GGUFFile(out)
    est = estimate_memory(g, model_config(g.metadata, flash_shape_view(g.tensors, lay), str(out)), 512, 64)
    budget = os.path.getsize(qwen15_path) // 2
    plan = plan_memory(lay, est, budget, "windowed")
    assert plan.total <= budget and plan.slab_bundles >= lay.n_bundles // 5, plan
    no_pred = FlashLayout(lay.n_layer, lay.d_model, lay.d_ff, lay.bundle_neurons, lay.gu_format, lay.down_format,
                          lay.bundle_stride, lay.requantized, lay.layer_offset)
    with pytest.raises(ValueError, match="too small for windowed mode"):
        plan_memory(no_pred, est, budget, "windowed")
