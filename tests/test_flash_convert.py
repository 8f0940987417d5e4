"""`lutllm convert --flash` (python/lutllm/convert.py): the flash file is a GGUF the `gguf` package
reads, resident tensors are the source's bytes, every bundle is 4096-aligned and >= 32 KiB, and the
bundles decode back to exactly the source weights (dequantized by `gguf`, independently of lutllm)
or, for types with no exact LUT form, to the documented 4-bit re-quantization."""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from lutllm import _core
from lutllm.cli import main
from lutllm.convert import ALIGN, MIN_BUNDLE_BYTES, ConvertError, FlashLayout, convert_flash, lut_group_block_bytes
from lutllm.gguf_file import GGUFFile

GQT = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def smol_flash(smollm2_flash):
    return smollm2_flash


def unbundle(flash: GGUFFile, lay: FlashLayout, layer: int):
    """Reassemble (gate, up, down) packed LUT matrices of one layer from its bundles."""
    blob = np.asarray(flash.tensor_data(f"blk.{layer}.ffn_bundles")).view(np.uint8)
    d, gate, up, down = lay.d_model, [], [], []
    f = lay.down_format[layer]
    for j in range(lay.n_bundles):
        n = lay.bundle_size(j)
        b = blob[j * lay.bundle_stride[layer] :]
        gb = lay.gate_bytes(layer, n)
        gate.append(b[:gb])
        up.append(b[gb : 2 * gb])
        down.append(b[2 * gb : 2 * gb + lay.down_bytes(layer, n)].reshape(d // 16, n // f[1], lut_group_block_bytes(f)))
        # padding after the bundle is zero
        assert not b[lay.bundle_bytes(layer, n) : lay.bundle_stride[layer]].any()
    return np.concatenate(gate), np.concatenate(up), np.concatenate(down, axis=1).reshape(-1)


def test_layout_alignment_and_sizes(smol_flash):
    _, out, lay = smol_flash
    g = GGUFFile(out)
    assert g.alignment == ALIGN
    assert lay.bundle_neurons % 32 == 0 and lay.bundle_neurons % 16 == 0
    for i in range(lay.n_layer):
        assert lay.layer_offset[i] % ALIGN == 0 and lay.bundle_stride[i] % ALIGN == 0
        assert all(lay.bundle_bytes(i, lay.bundle_size(j)) <= lay.bundle_stride[i] for j in range(lay.n_bundles))
        assert lay.bundle_bytes(i, lay.bundle_neurons) >= MIN_BUNDLE_BYTES
        # padding stays small: < 10 % of the layer's weight bytes
        used = sum(lay.bundle_bytes(i, lay.bundle_size(j)) for j in range(lay.n_bundles))
        assert lay.layer_bytes(i) < 1.1 * used


def test_gguf_package_reads_it_and_resident_tensors_are_unchanged(smol_flash):
    src_path, out, lay = smol_flash
    src = GGUFFile(src_path)
    r = gguf.GGUFReader(str(out))
    names = {t.name: t for t in r.tensors}
    for t in src.tensors.values():
        if any(k in t.name for k in ("ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")):
            assert t.name not in names
            continue
        rt = names[t.name]
        assert int(rt.tensor_type) == t.ggml_type
        np.testing.assert_array_equal(np.asarray(rt.data).view(np.uint8).reshape(-1),
                                      np.asarray(src.tensor_data(t.name)).view(np.uint8).reshape(-1), err_msg=t.name)
    assert names["blk.0.ffn_bundles"].tensor_type == GQT.I8
    # metadata is carried over (tokenizer included), flash keys added
    fl = GGUFFile(out)
    for k, v in src.metadata.items():
        if k != "general.alignment":
            assert np.array_equal(np.asarray(fl.metadata[k]), np.asarray(v)), k
    assert fl.metadata["lutllm.flash.bundle_neurons"] == lay.bundle_neurons


def test_bundles_decode_to_the_source_weights(smol_flash):
    """Q4_1 repacks exactly: unpacking the reassembled bundles equals gguf's own dequantization, and
    the bytes equal what the resident runtime repacks."""
    src_path, out, lay = smol_flash
    src, fl = GGUFFile(src_path), GGUFFile(out)
    assert lay.requantized == ()
    for layer in (0, 13, lay.n_layer - 1):
        gate, up, down = unbundle(fl, lay, layer)
        for name, packed, rows, k, fmt in (("ffn_gate", gate, lay.d_ff, lay.d_model, lay.gu_format[layer]),
                                            ("ffn_up", up, lay.d_ff, lay.d_model, lay.gu_format[layer]),
                                            ("ffn_down", down, lay.d_model, lay.d_ff, lay.down_format[layer])):
            t = src.tensor(f"blk.{layer}.{name}.weight")
            raw = np.asarray(src.tensor_data(t.name)).view(np.uint8).reshape(-1)
            want = gguf.quants.dequantize(raw, GQT(t.ggml_type)).reshape(rows, k)
            got = _core.lut_unpack(np.ascontiguousarray(packed), fmt, rows, k)
            np.testing.assert_array_equal(got, want, err_msg=f"layer {layer} {name}")
            repacked, _ = _core.lut_repack_ggml(t.ggml_type, raw, rows, k, 64)
            np.testing.assert_array_equal(packed, repacked)


def _tiny_gguf(path, types, d=64, dff=96 + 32, seed=0):
    """A one-layer llama-shaped GGUF whose FFN tensors have the given ggml types."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(d)
    w.add_feed_forward_length(dff)
    w.add_tensor("token_embd.weight", rng.standard_normal((32, d)).astype(np.float32))
    floats = {}
    for name, ty, shape in (("ffn_gate", types[0], (dff, d)), ("ffn_up", types[1], (dff, d)),
                            ("ffn_down", types[2], (d, dff))):
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        floats[name] = x
        q = gguf.quants.quantize(x, ty)
        w.add_tensor(f"blk.0.{name}.weight", q, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return floats


def test_requantized_types_are_listed_and_close(tmp_path):
    """Q8_0 / F16 have no exact LUT form: they become W4 g32 fp16 + offset (lut_quantize of the
    dequantized source), listed in lutllm.flash.requantized. Q4_0 next to a Q8_0 partner is
    re-quantized too, because gate and up must share one format."""
    src = tmp_path / "tiny.gguf"
    _tiny_gguf(src, (GQT.Q8_0, GQT.Q4_0, GQT.F16))
    out = tmp_path / "tiny.flash.gguf"
    msgs = []
    lay = convert_flash(src, out, progress=False, log=msgs.append)
    assert set(lay.requantized) == {"blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"}
    assert msgs and "re-quantized" in msgs[0]
    assert lay.gu_format[0] == (4, 32, 2, 1) and lay.down_format[0] == (4, 32, 2, 1)
    g, fl = GGUFFile(src), GGUFFile(out)
    gate, up, down = unbundle(fl, lay, 0)
    for name, packed, rows, k in (("ffn_gate", gate, lay.d_ff, lay.d_model), ("ffn_up", up, lay.d_ff, lay.d_model),
                                  ("ffn_down", down, lay.d_model, lay.d_ff)):
        t = g.tensor(f"blk.0.{name}.weight")
        raw = np.asarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1)
        src_w = gguf.quants.dequantize(raw, GQT(t.ggml_type)).reshape(rows, k).astype(np.float32)
        want, _ = _core.lut_quantize(np.ascontiguousarray(src_w), 4, 32)
        np.testing.assert_array_equal(packed, want, err_msg=name)
        # and the 4-bit RTN error is within half a step of each group's range (plus fp16 rounding)
        got = _core.lut_unpack(np.ascontiguousarray(packed), (4, 32, 2, 1), rows, k)
        grp = src_w.reshape(rows, k // 32, 32)
        step = (grp.max(-1) - grp.min(-1)) / 15
        err = np.abs(got - src_w).reshape(rows, k // 32, 32).max(-1)
        assert (err <= 0.5 * step * 1.01 + 1e-4).all(), name


def test_bundle_neurons_option_and_partial_last_bundle(tmp_path):
    src = tmp_path / "tiny.gguf"
    _tiny_gguf(src, (GQT.Q4_0, GQT.Q4_0, GQT.Q4_0), dff=160)
    out = tmp_path / "tiny.flash.gguf"
    lay = convert_flash(src, out, bundle_neurons=64, progress=False)
    assert lay.bundle_neurons == 64 and lay.n_bundles == 3 and lay.bundle_size(2) == 32
    g, fl = GGUFFile(src), GGUFFile(out)
    gate, up, down = unbundle(fl, lay, 0)
    for name, packed, rows, k in (("ffn_gate", gate, 160, 64), ("ffn_down", down, 64, 160)):
        t = g.tensor(f"blk.0.{name}.weight")
        raw = np.asarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1)
        want = gguf.quants.dequantize(raw, GQT.Q4_0).reshape(rows, k)
        np.testing.assert_array_equal(_core.lut_unpack(np.ascontiguousarray(packed), (4, 32, 2, 0), rows, k), want)
    with pytest.raises(ConvertError, match="multiple of 32"):
        convert_flash(src, out, bundle_neurons=48, progress=False)


def test_errors_and_atomic_write(tmp_path, monkeypatch):
    src = tmp_path / "tiny.gguf"
    _tiny_gguf(src, (GQT.Q4_0, GQT.Q4_0, GQT.Q4_0))
    with pytest.raises(ConvertError, match="overwrite the input"):
        convert_flash(src, src, progress=False)
    # a failure half-way leaves neither the output nor a temporary file behind
    import lutllm.convert as conv

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(conv, "layer_bundles", boom)
    out = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_flash(src, out, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["tiny.gguf"]
    monkeypatch.undo()
    convert_flash(src, out, progress=False)
    with pytest.raises(ConvertError, match="already a flash file"):
        convert_flash(out, tmp_path / "again.gguf", progress=False)
    # a GGUF without a gated FFN names the missing tensor
    w = gguf.GGUFWriter(str(tmp_path / "noffn.gguf"), "llama")
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_tensor("token_embd.weight", np.zeros((4, 64), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ConvertError, match="blk.0.ffn_gate.weight' is missing"):
        convert_flash(tmp_path / "noffn.gguf", tmp_path / "x.gguf", progress=False)


def test_cli_convert(tmp_path):
    src = tmp_path / "tiny.gguf"
    _tiny_gguf(src, (GQT.Q4_0, GQT.Q4_0, GQT.Q4_0))
    r = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "o.gguf"), "--flash"])
    assert r.exit_code == 0, r.output
    assert "bundles of" in r.output and FlashLayout.from_gguf(GGUFFile(tmp_path / "o.gguf")) is not None
    r = CliRunner().invoke(main, ["convert", str(src), str(tmp_path / "p.gguf")])
    assert r.exit_code == 2 and "--flash" in r.output


@pytest.mark.slow
def test_qwen_mixed_types(tmp_path):
    """Qwen2.5-Coder-0.5B mixes Q5_0 gate/up with Q4_K or Q6_K down: Q4_K repacks exactly (fp32
    scales), Q5_0 and Q6_K are re-quantized and listed; every layer's bundles decode as documented."""
    from lutllm.models import resolve_model

    src_path = resolve_model("qwen2.5-coder-0.5b-instruct")
    out = tmp_path / "qwen.flash.gguf"
    lay = convert_flash(src_path, out, progress=False)
    src, fl = GGUFFile(src_path), GGUFFile(out)
    kinds = {src.tensor(f"blk.{i}.ffn_down.weight").type_name for i in range(lay.n_layer)}
    assert kinds == {"Q4_K", "Q6_K"}
    for i in range(lay.n_layer):
        down_t = src.tensor(f"blk.{i}.ffn_down.weight")
        assert (f"blk.{i}.ffn_down.weight" in lay.requantized) == (down_t.type_name != "Q4_K")
        assert f"blk.{i}.ffn_gate.weight" in lay.requantized  # Q5_0
        assert lay.bundle_bytes(i, lay.bundle_neurons) >= MIN_BUNDLE_BYTES
    for i in (0, 1, 2, 3):  # both down kinds
        gate, up, down = unbundle(fl, lay, i)
        t = src.tensor(f"blk.{i}.ffn_down.weight")
        raw = np.asarray(src.tensor_data(t.name)).view(np.uint8).reshape(-1)
        w = gguf.quants.dequantize(raw, GQT(t.ggml_type)).reshape(lay.d_model, lay.d_ff)
        got = _core.lut_unpack(np.ascontiguousarray(down), lay.down_format[i], lay.d_model, lay.d_ff)
        if t.type_name == "Q4_K":
            assert lay.down_format[i] == (4, 32, 4, 1)
            np.testing.assert_array_equal(got, w)
        else:
            want, _ = _core.lut_quantize(np.ascontiguousarray(w.astype(np.float32)), 4, 32)
            np.testing.assert_array_equal(down, want)


def test_k_quant_gate_up_keep_their_compact_form(tmp_path):
    """Q4_K gate/up bundles are row slices of the k-quant LUT layout (4.625 bits/weight, the bytes
    the resident runtime repacks) instead of fp32 scales (6 bits/weight); down, cut into K-slices
    narrower than a 256-weight super-block, keeps fp32 scales. Both decode exactly to the weights
    `gguf` dequantizes, and every flash mode gives the same logits, close to the source model's."""
    from synthetic_models import T, write_model

    from lutllm.engine import Engine

    src = write_model(tmp_path / "k.gguf", "qwen2", d=256, d_ff=768, weight_type=T.Q8_0, ffn_type=T.Q4_K)
    out = tmp_path / "k.flash.gguf"
    lay = convert_flash(src, out, progress=False, predictor_rank=32)
    g, fl = GGUFFile(src), GGUFFile(out)
    assert not lay.requantized
    for i in range(lay.n_layer):
        assert lay.gu_format[i] == (4, 32, 1, 1) and lay.down_format[i] == (4, 32, 4, 1)
        assert lay.gate_bytes(i, 16) * 8 == 4.625 * 16 * lay.d_model
        gate, up, down = unbundle(fl, lay, i)
        for name, got_packed, fmt, rows, k in (("ffn_gate", gate, lay.gu_format[i], lay.d_ff, lay.d_model),
                                                ("ffn_up", up, lay.gu_format[i], lay.d_ff, lay.d_model),
                                                ("ffn_down", down, lay.down_format[i], lay.d_model, lay.d_ff)):
            t = g.tensor(f"blk.{i}.{name}.weight")
            raw = np.asarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1)
            want = gguf.quants.dequantize(raw, GQT.Q4_K).reshape(rows, k)
            got = _core.lut_unpack(np.ascontiguousarray(got_packed), fmt, rows, k)
            np.testing.assert_array_equal(got, want, err_msg=f"layer {i} {name}")
            if name != "ffn_down":  # byte for byte what the resident runtime repacks
                packed, f = _core.lut_repack_ggml(int(GQT.Q4_K), raw, rows, k, kq=True)
                assert tuple(f) == fmt
                np.testing.assert_array_equal(got_packed, packed)
    toks = [1, 17, 45, 99, 3, 250, 7, 64, 128, 5]

    def logits(path, **kw):
        e = Engine(str(path), n_ctx=64, n_threads=2, n_batch=4, **kw)
        return np.concatenate([e.eval(toks[:6], all_logits=True), e.eval(toks)[-1:]])

    ref = logits(src)
    dense = logits(out, flash_mode="dense")
    np.testing.assert_array_equal(logits(out, flash_mode="resident"), dense)
    np.testing.assert_array_equal(logits(out, flash_mode="windowed"), dense)  # no thresholds: all active
    # the same weights; the down products round differently (activation table scale per 32 weights
    # for fp32-scale groups, per 256 for k-quant super-blocks), so the logits agree to table rounding
    rel = np.linalg.norm(dense - ref) / np.linalg.norm(ref)
    assert 0 < rel < 1e-2, rel  # measured 0.0051 (0.0060 with fp32-scale gate/up)
