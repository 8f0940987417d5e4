"""`lutllm quantize` end to end: packed codes and scales against an independent numpy round-to-nearest
quantizer and a numpy decoder of the documented layout (lut.h), files that gguf.GGUFReader reads,
perplexity / generation of requantized SmolLM2, determinism, clean failure (no OUT, no temp file),
clear errors for bad arguments and corrupt layouts, and zero-copy loading.

The numpy side shares no code with lutllm: it reads files with gguf.GGUFReader and decodes sources
with gguf.quants.dequantize.
"""
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import gguf
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize as gquant

from lutllm import quantize as qmod
from lutllm.quantize import QuantizeError, quantize_model

DATA = pathlib.Path(__file__).parent / "data"
LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
KINDS = {"1": 1, "2": 2, "3": 3, "4": 4, "ternary": 5}


# ---------------------------------------------------------------------------- numpy references
def _field(r: GGUFReader, key):
    return r.fields[key].contents()


def decode_packed(buf: np.ndarray, kind: int, group: int, scale_bytes: int, has_offset: int, k: int, rows: int):
    """Decode the lut.h layout with numpy: -> (codes (rows, k) int, scales (rows, k/G), offsets)."""
    n = 2 if kind == 5 else kind
    G, ng, nrb = group, k // group, -(-rows // 16)
    sdt = np.float16 if scale_bytes == 2 else np.float32
    gbb = 2 * G * n + 16 * scale_bytes * (1 + has_offset)
    blocks = np.asarray(buf, dtype=np.uint8).reshape(nrb, ng, gbb)
    planes = np.zeros((n, nrb, ng, 16, G), np.int64)  # plane bit of (row block, group, row, weight)
    pos = 0
    for pp in range(n // 2):
        for q in range(G // 4):
            tile = blocks[:, :, pos:pos + 16].astype(np.int64)
            pos += 16
            for j in range(16):
                lo, hi = tile[:, :, j] & 15, tile[:, :, j] >> 4
                b = 2 * pp + (j & 1)
                for i in range(4):
                    planes[b, :, :, j // 2, 4 * q + i] = (lo >> i) & 1
                    planes[b, :, :, 8 + j // 2, 4 * q + i] = (hi >> i) & 1
    if n % 2:
        C = min(G, 32) // 4  # quads per single-tile chunk; ST(c, i): quads C*c + i (low), C*c + i + C/2 (high)
        for c in range(G // 4 // C):
            for i in range(C // 2):
                tile = blocks[:, :, pos:pos + 16].astype(np.int64)
                pos += 16
                for j in range(16):
                    for bit in range(4):
                        planes[n - 1, :, :, j, 4 * (C * c + i) + bit] = (tile[:, :, j] >> bit) & 1
                        planes[n - 1, :, :, j, 4 * (C * c + i + C // 2) + bit] = ((tile[:, :, j] >> 4) >> bit) & 1
    scales = blocks[:, :, pos:pos + 16 * scale_bytes].copy().view(sdt).astype(np.float32)
    pos += 16 * scale_bytes
    offsets = blocks[:, :, pos:pos + 16 * scale_bytes].copy().view(sdt).astype(np.float32) if has_offset else None
    if kind == 5:
        codes = planes[0] + planes[1] - 1  # value = s * (a + b - 1)
    else:
        codes = sum(planes[b] << b for b in range(n))
    # (nrb, ng, 16, G) -> (rows, k)
    codes = codes.transpose(0, 2, 1, 3).reshape(nrb * 16, k)[:rows]
    scales = scales.reshape(nrb, ng, 16).transpose(0, 2, 1).reshape(nrb * 16, ng)[:rows]
    if offsets is not None:
        offsets = offsets.reshape(nrb, ng, 16).transpose(0, 2, 1).reshape(nrb * 16, ng)[:rows]
    return codes, scales, offsets


def decoded_values(codes, scales, offsets, kind, group):
    s = np.repeat(scales, group, axis=1)
    if kind == 5:
        return s * codes.astype(np.float32)
    if offsets is not None:
        return s * codes.astype(np.float32) + np.repeat(offsets, group, axis=1)
    return s * (codes - (1 << (kind - 1))).astype(np.float32)


def numpy_rtn(w: np.ndarray, kind: int, group: int):
    """Round to nearest as lut.h documents it, in float32 (fp16 scales): -> codes, scales, offsets."""
    f16 = lambda v: np.asarray(v, np.float32).astype(np.float16).astype(np.float32)  # noqa: E731
    rows, k = w.shape
    x = w.astype(np.float32).reshape(rows, k // group, group)
    if kind == 5:
        total = np.cumsum(np.abs(x).astype(np.float64), axis=2)[:, :, -1]  # sequential, as the C++ loop
        s = f16((total / group).astype(np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(s[..., None] > 0, np.rint(x / s[..., None]), 0)
        return np.clip(t, -1, 1).astype(np.int64).reshape(rows, k), s, None
    qmax = np.float32((1 << kind) - 1)
    mn, mx = x.min(axis=2), x.max(axis=2)
    if kind == 1:
        x64 = x.astype(np.float64)
        mean = np.cumsum(x64, axis=2)[:, :, -1] / group
        below = x64 < mean[..., None]
        nlo, nhi = below.sum(axis=2), (~below).sum(axis=2)
        lo = np.cumsum(np.where(below, x64, 0), axis=2)[:, :, -1]
        hi = np.cumsum(np.where(below, 0, x64), axis=2)[:, :, -1]
        with np.errstate(divide="ignore", invalid="ignore"):
            mn = np.where(nlo > 0, (lo / np.maximum(nlo, 1)).astype(np.float32), mn)
            mx = np.where(nhi > 0, (hi / np.maximum(nhi, 1)).astype(np.float32), mx)
    o = f16(mn)
    s = f16((mx - mn) / qmax)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(s[..., None] > 0, np.rint((x - o[..., None]) / s[..., None]), 0)
    return np.clip(q, 0, qmax).astype(np.int64).reshape(rows, k), s, o


# ---------------------------------------------------------------------------- a small model file
D, FF, NH, NKV, VOCAB = 128, 96, 4, 1, 64  # kv rows 32; ffn_down k = 96: no g64/g128 split


def _write_tiny(path, rng):
    """A 2-layer llama GGUF with linear weights in several source types (F32, F16, Q8_0, Q4_0, Q4_1,
    Q5_0) and a separate output head; rows 32/96/128 and k 96/128."""
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(FF)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_string("general.name", "tiny")
    w.add_array("test.floats", [0.5, 1.5, -2.0])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_merges(["t 1"])
    types = [QT.F32, QT.F16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.F16]

    def add(name, shape, qt):
        v = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if qt == QT.F32:
            w.add_tensor(name, v)
        elif qt == QT.F16:
            w.add_tensor(name, v.astype(np.float16))
        else:
            w.add_tensor(name, gquant(v, qt), raw_dtype=qt)

    add("token_embd.weight", (VOCAB, D), QT.F32)
    for i in range(2):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", (D,), QT.F32)
        add(p + "ffn_norm.weight", (D,), QT.F32)
        shapes = {"attn_q": (D, D), "attn_k": (D // NH * NKV, D), "attn_v": (D // NH * NKV, D),
                  "attn_output": (D, D), "ffn_gate": (FF, D), "ffn_up": (FF, D), "ffn_down": (D, FF)}
        for j, n in enumerate(LINEAR):
            add(p + n + ".weight", shapes[n], types[(j + i) % len(types)])
    add("output_norm.weight", (D,), QT.F32)
    add("output.weight", (VOCAB, D), QT.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    p = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    _write_tiny(p, np.random.default_rng(7))
    return p


def _reader_tensors(path):
    return {t.name: t for t in GGUFReader(str(path)).tensors}


# ---------------------------------------------------------------------------- format and values
@pytest.mark.parametrize("bits,group", [("1", 32), ("2", 32), ("3", 64), ("4", 128), ("ternary", 64), ("2", 128)])
def test_rtn_codes_and_scales_match_numpy(tiny, tmp_path, bits, group):
    """Every packed tensor, decoded by numpy from the documented layout, holds exactly the codes,
    fp16 scales and offsets of a numpy round-to-nearest of the gguf-dequantized source."""
    out = tmp_path / "q.gguf"
    rep = quantize_model(tiny, out, bits, group, method="rtn", progress=False, threads=2)
    r = GGUFReader(str(out))
    names = _field(r, "lutllm.quant.tensors")
    lay = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)
    assert _field(r, "lutllm.quant.version") == 1 and _field(r, "lutllm.quant.method") == "rtn"
    assert sorted(names) == sorted(f"blk.{i}.{n}.weight" for i in range(2) for n in LINEAR)  # not the head
    src, dst = _reader_tensors(tiny), {t.name: t for t in r.tensors}
    kind = KINDS[bits]
    for name, (knd, g, sb, off, k, rows) in zip(names, lay):
        ref_w = dequantize(src[name].data, src[name].tensor_type).reshape(rows, k)
        want_g = group if k % group == 0 else 32  # k = 96: largest of 64/32 dividing it
        assert (knd, g, sb, off) == (kind, want_g, 2, 0 if kind == 5 else 1), name
        t = dst[name]
        assert t.tensor_type == QT.I8 and t.data_offset % 64 == 0
        codes, s, o = decode_packed(np.asarray(t.data).view(np.uint8), knd, g, sb, off, k, rows)
        rc, rs, ro = numpy_rtn(ref_w, kind, g)
        np.testing.assert_array_equal(s, rs.reshape(rows, -1), err_msg=name)
        if ro is not None:
            np.testing.assert_array_equal(o, ro.reshape(rows, -1), err_msg=name)
        np.testing.assert_array_equal(codes, rc, err_msg=name)
    assert rep.packed == 14 and rep.copied == len(src) - 14


@pytest.mark.parametrize("kind", [1, 3])
def test_lut_unpack_agrees_with_numpy_decoder_g16(kind):
    """Odd plane counts at G = 16: two single tiles per group (lut.h), read back by both decoders."""
    from lutllm import _core

    rows, k = 21, 80
    w = np.random.default_rng(kind).standard_normal((rows, k)).astype(np.float32)
    buf, fmt = _core.lut_quantize(w, kind, 16)
    assert fmt == (kind, 16, 2, 1)
    ours = _core.lut_unpack(buf, fmt, rows, k)
    np.testing.assert_array_equal(ours, decoded_values(*decode_packed(buf, kind, 16, 2, 1, k, rows), kind, 16))


def test_lut_unpack_agrees_with_numpy_decoder(tiny, tmp_path):
    from lutllm import _core

    out = tmp_path / "q.gguf"
    quantize_model(tiny, out, "3", 32, progress=False)
    r = GGUFReader(str(out))
    lay = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)
    t = {x.name: x for x in r.tensors}
    for name, (knd, g, sb, off, k, rows) in zip(_field(r, "lutllm.quant.tensors"), lay):
        buf = np.ascontiguousarray(np.asarray(t[name].data).view(np.uint8).reshape(-1))
        ours = _core.lut_unpack(buf, (int(knd), int(g), int(sb), int(off)), int(rows), int(k))
        np.testing.assert_array_equal(ours, decoded_values(*decode_packed(buf, knd, g, sb, off, k, rows), knd, g))


def test_mse_method_is_never_worse_than_rtn(tiny, tmp_path):
    """Per tensor, the least-squared-error method's error is at most RTN's (it keeps RTN per group
    unless a candidate beats it) and clearly smaller at 2 bits."""
    src = _reader_tensors(tiny)
    errs = {}
    for method in ("rtn", "mse"):
        out = tmp_path / f"{method}.gguf"
        quantize_model(tiny, out, "2", 32, method=method, progress=False)
        r = GGUFReader(str(out))
        lay = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)
        t = {x.name: x for x in r.tensors}
        for name, (knd, g, sb, off, k, rows) in zip(_field(r, "lutllm.quant.tensors"), lay):
            ref = dequantize(src[name].data, src[name].tensor_type).reshape(rows, k)
            dec = decoded_values(*decode_packed(np.asarray(t[name].data).view(np.uint8), knd, g, sb, off, k, rows), knd, g)
            errs[method, name] = float(((dec - ref) ** 2).sum())
    names = {n for _, n in errs}
    for n in names:
        assert errs["mse", n] <= errs["rtn", n], n
    total = {m: sum(errs[m, n] for n in names) for m in ("rtn", "mse")}
    assert total["mse"] < 0.85 * total["rtn"], total


def test_output_is_a_readable_gguf_with_everything_else_copied(tiny, tmp_path):
    out = tmp_path / "q.gguf"
    quantize_model(tiny, out, "4", 32, progress=False)
    a, b = GGUFReader(str(tiny)), GGUFReader(str(out))
    for key, f in a.fields.items():
        if key.startswith("GGUF.") or key == "general.alignment":
            continue
        assert key in b.fields, key
        assert b.fields[key].contents() == f.contents(), key
    assert _field(b, "general.alignment") == 64
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    assert list(ta) == list(tb)  # same tensors, same order
    packed = set(_field(b, "lutllm.quant.tensors"))
    for name, t in ta.items():
        if name in packed:
            continue
        assert tb[name].tensor_type == t.tensor_type and list(tb[name].shape) == list(t.shape), name
        assert np.array_equal(np.asarray(tb[name].data).view(np.uint8), np.asarray(t.data).view(np.uint8)), name


def test_output_head_is_quantized_only_on_request(tiny, tmp_path):
    out = tmp_path / "q.gguf"
    quantize_model(tiny, out, "4", 32, output_head=True, progress=False)
    assert "output.weight" in _field(GGUFReader(str(out)), "lutllm.quant.tensors")


@pytest.mark.parametrize("bits,output_head", [("2", False), ("2", True), ("3", True)])
def test_mix_gives_a_quantized_output_head_one_more_bit(tiny, tmp_path, bits, output_head):
    """--mix --output-head: the head gets one more bit (3 at 2 bits, 4 at 3), as llama.cpp's low-bit mixes
    keep it wider, and holds exactly a numpy round-to-nearest at that width; without --output-head it is
    copied as is."""
    out = tmp_path / "q.gguf"
    quantize_model(tiny, out, bits, 32, method="rtn", output_head=output_head, progress=False, threads=2, mix=True)
    r = GGUFReader(str(out))
    names = list(_field(r, "lutllm.quant.tensors"))
    assert ("output.weight" in names) == output_head
    if not output_head:
        return
    knd, g, sb, off, k, rows = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)[names.index("output.weight")]
    assert knd == KINDS[bits] + 1
    src, dst = _reader_tensors(tiny)["output.weight"], _reader_tensors(out)["output.weight"]
    codes, s, _ = decode_packed(np.asarray(dst.data).view(np.uint8), knd, g, sb, off, k, rows)
    rc, rs, _ = numpy_rtn(dequantize(src.data, src.tensor_type).reshape(rows, k), int(knd), int(g))
    np.testing.assert_array_equal(codes, rc)
    np.testing.assert_array_equal(s, rs.reshape(rows, -1))


def test_requantizing_a_packed_file_decodes_its_packed_tensors(tiny, tmp_path):
    """A packed file is a valid source: its packed tensors are decoded (lut_unpack) and requantized;
    4-bit -> 4-bit RTN of values already on a 4-bit grid changes nothing."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    quantize_model(tiny, a, "4", 32, method="rtn", progress=False)
    quantize_model(a, b, "4", 32, method="rtn", progress=False)
    ta, tb = _reader_tensors(a), _reader_tensors(b)
    lay = np.asarray(_field(GGUFReader(str(b)), "lutllm.quant.layouts")).reshape(-1, 6)
    for name, (knd, g, sb, off, k, rows) in zip(_field(GGUFReader(str(b)), "lutllm.quant.tensors"), lay):
        va = decoded_values(*decode_packed(np.asarray(ta[name].data).view(np.uint8), knd, g, sb, off, k, rows), knd, g)
        vb = decoded_values(*decode_packed(np.asarray(tb[name].data).view(np.uint8), knd, g, sb, off, k, rows), knd, g)
        np.testing.assert_allclose(vb, va, rtol=0, atol=1e-3 * np.abs(va).max())


def test_quantizing_is_deterministic_across_threads_and_chunks(tiny, tmp_path, monkeypatch):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    quantize_model(tiny, a, "3", 32, progress=False, threads=1)
    monkeypatch.setattr(qmod, "_CHUNK_WEIGHTS", 16 * 32)  # many small row chunks on 3 threads
    quantize_model(tiny, b, "3", 32, progress=False, threads=3)
    assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------------------- failure leaves nothing
@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError])
def test_interrupted_or_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch, exc):
    out = tmp_path / "q.gguf"
    out.write_bytes(b"previous")  # an existing OUT is replaced only by a complete file
    real, calls = qmod._quantize_chunk, []

    def boom(*a, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise exc("stop")
        return real(*a, **kw)

    monkeypatch.setattr(qmod, "_quantize_chunk", boom)
    with pytest.raises(exc):
        quantize_model(tiny, out, "2", 32, progress=False, threads=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.gguf"]
    assert out.read_bytes() == b"previous"


def test_ctrl_c_on_the_cli_leaves_no_file(smollm2_path, tmp_path):
    """A real SIGINT while the CLI writes: exit 130, no OUT, no temporary file."""
    out = tmp_path / "q.gguf"
    env = dict(os.environ, LUTLLM_NO_PROGRESS="1")
    p = subprocess.Popen([sys.executable, "-m", "lutllm.cli", "quantize", smollm2_path, str(out), "--bits", "2",
                          "-t", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         # the default SIGINT disposition even when this runs as a background job
                         # (a shell without job control makes those ignore SIGINT, and children inherit it)
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not any(tmp_path.iterdir()) and p.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- CLI errors
def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "lutllm.cli", "quantize", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, LUTLLM_NO_PROGRESS="1"))


@pytest.mark.parametrize("extra,code,msg", [
    (["--bits", "5"], 2, "Invalid value for '--bits'"),
    (["--bits", "4", "--group", "48"], 2, "Invalid value for '--group'"),
    (["--bits", "4", "--method", "best"], 2, "Invalid value for '--method'"),
    ([], 2, "Missing option '--bits'"),
])
def test_cli_bad_options(tiny, tmp_path, extra, code, msg):
    r = _cli(tiny, tmp_path / "o.gguf", *extra)
    assert r.returncode == code and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_paths(tiny, tmp_path):
    cases = [
        ((tmp_path / "missing.gguf", tmp_path / "o.gguf"), "not a file and not a known model"),
        ((DATA / "ppl_text.txt", tmp_path / "o.gguf"), "not a GGUF file"),
        ((tiny, tmp_path / "nodir" / "o.gguf"), "does not exist"),
        ((tiny, tmp_path), "is a directory"),
        ((tiny, tiny), "is the input file"),
    ]
    for (src, dst), msg in cases:
        r = _cli(src, dst, "--bits", "4")
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, (src, dst, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_quantizes_and_info_shows_it(tiny, tmp_path):
    out = tmp_path / "o.gguf"
    r = _cli(tiny, out, "--bits", "3", "--group", "64")
    assert r.returncode == 0, r.stderr
    assert "quantized 14 tensors" in r.stdout and "w3g64" in r.stdout
    assert "ffn_down.weight: g32" in r.stdout  # k = 96 falls back to group 32
    info = subprocess.run([sys.executable, "-m", "lutllm.cli", "info", "-m", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "quantization:  lutllm LUT v1 (w3g32, w3g64, method mse): 14 packed tensors" in info.stdout
    assert "LUT_W3G64" in info.stdout


# ---------------------------------------------------------------------------- corrupt layouts
def _corrupt(src, dst, key, index, value):
    dst.write_bytes(src.read_bytes())
    r = GGUFReader(str(dst), "r+")
    f = r.fields[key]
    f.parts[f.data[index]][0] = value
    r.data.flush()
    del r


@pytest.mark.parametrize("key,index,value,msg", [
    ("lutllm.quant.version", 0, 9, "layout version 9 is not supported"),
    ("lutllm.quant.layouts", 1, 64, "does not match its layout"),   # group 32 -> 64
    ("lutllm.quant.layouts", 0, 7, "invalid LUT layout"),            # kind 7
    ("lutllm.quant.layouts", 5, 3, "does not match its layout"),     # rows
    ("lutllm.quant.layouts", 2, 3, "scale_bytes 3"),
])
def test_corrupt_layout_is_a_clear_error(tiny, tmp_path, key, index, value, msg):
    from lutllm.gguf_file import GGUFError, GGUFFile

    good, bad = tmp_path / "good.gguf", tmp_path / "bad.gguf"
    quantize_model(tiny, good, "4", 32, progress=False)
    _corrupt(good, bad, key, index, value)
    with pytest.raises(GGUFError, match=msg):
        GGUFFile(bad)


def test_runtime_rejects_inconsistent_packed_descriptions(smollm2_q4):
    """The C++ weight store checks layouts again (for callers that bypass gguf_file.py)."""
    from lutllm import _core
    from lutllm.engine import Engine

    e = Engine(smollm2_q4, n_ctx=32, n_threads=1)
    cfg = dict(e.config.as_dict(), use_lut=True)
    descs = e.gguf.runtime_descs()
    i = next(i for i, d in enumerate(descs) if len(d) == 6)
    for fmt, msg in [((4, 48, 2, 1), "invalid packed LUT layout"), ((4, 64, 2, 1), "bytes given"),
                     ((5, 32, 2, 1), "ternary weights have no offset")]:
        bad = list(descs)
        bad[i] = (*descs[i][:5], fmt)
        with pytest.raises(_core.Error, match=msg):
            _core.Model(str(smollm2_q4), cfg, bad, 1)


# ---------------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def smollm2_q4(smollm2_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("q4") / "smollm2-w4g32.gguf"
    quantize_model(smollm2_path, out, "4", 32, progress=False)
    return str(out)


def _ppl(path, text):
    from lutllm.engine import Engine

    e = Engine(path, n_ctx=256, n_threads=2)
    ppl, n, _ = e.perplexity(text, 128)
    return ppl, n, e


def test_smollm2_4bit_perplexity_matches_the_source(smollm2_path, smollm2_q4):
    """Q4_1 holds 4-bit codes with an fp16 scale and min per 32 weights; requantizing to w4g32 keeps
    every group whose codes span 0..15 exactly, so perplexity must stay within 0.5% (measured:
    identical). 3 chunks of 128 tokens."""
    text = (DATA / "ppl_text.txt").read_text(encoding="utf-8")[:2000]
    ppl_src, n, _ = _ppl(smollm2_path, text)
    ppl_q, n2, e = _ppl(smollm2_q4, text)
    assert n == n2 >= 3
    assert abs(ppl_q / ppl_src - 1) < 0.005, (ppl_q, ppl_src)
    assert set(e._model.linear_paths().values()) == {"lut", "q8"}  # q8: the tied Q8_0 head


def test_packed_weights_are_used_from_the_mapping(smollm2_q4, smollm2_path):
    """Zero copy: a packed tensor's bytes are the mapping's bytes at a 64-byte aligned offset, and
    binding the model plus one forward pass adds almost no anonymous memory (no repacked copies)."""
    from lutllm.engine import Engine

    e = Engine(smollm2_q4, n_ctx=32, n_threads=1)
    info = e.gguf.tensors["blk.0.ffn_up.weight"]
    assert info.lut is not None and info.shape == (576, 1536)
    view = e._model.tensor_view("blk.0.ffn_up.weight")
    assert view.__array_interface__["data"][0] == e._model.mapping_address + info.offset
    assert info.offset % 64 == 0 and view.size == info.nbytes
    from anon_memory import anon_growth_kb

    (load_kb, eval_kb), (src_load_kb, _) = anon_growth_kb([smollm2_q4, smollm2_path], use_lut=True)
    packed = sum(t.nbytes for t in e.gguf.tensors.values() if t.lut is not None)
    # the Q4_1 source is repacked at load (an owned copy of the same size): the probe sees copies
    assert src_load_kb * 1024 > 0.8 * packed, (src_load_kb, packed)
    # the packed file is not copied: only the KV cache (2.9 MB), scratch and thread stacks
    assert load_kb * 1024 < 0.1 * packed and eval_kb * 1024 < 0.05 * packed, (load_kb, eval_kb, packed)


@pytest.mark.parametrize("bits", ["1", "2", "ternary"])
def test_smollm2_low_bit_models_load_and_generate(smollm2_path, tmp_path, bits):
    """1-bit, 2-bit and ternary SmolLM2 (135M parameters lose most of their quality at these widths, so no
    quality bound): every linear layer runs from the packed file and greedy generation runs."""
    from lutllm.engine import Engine
    from lutllm.sampler import SamplerParams

    out = tmp_path / f"q{bits}.gguf"
    rep = quantize_model("smollm2-135m-instruct", out, bits, 64, method="rtn", progress=False)  # a registry name
    assert rep.src == smollm2_path and rep.packed == 210 and 0 < rep.nmse < 0.5
    e = Engine(out, n_ctx=64, n_threads=2)
    paths = e._model.linear_paths()
    assert list(paths.values()).count("lut") == 210
    logits = e.eval(e.tokenizer.encode("The capital of France is", add_special=True))
    assert np.isfinite(logits).all()
    toks = list(e.generate(e.tokenizer.encode("Hello", add_special=True), SamplerParams(temperature=0),
                           max_tokens=8, stop_at_eog=False))
    assert len(toks) == 8


@pytest.mark.slow  # ~60 s: float64 numpy forward pass and a numpy decode of 210 tensors
def test_smollm2_3bit_logits_agree_with_numpy_forward_of_the_decoded_weights(smollm2_path, tmp_path):
    """The runtime on a 3-bit packed file computes the model the file describes: a numpy float forward
    pass (tests/reference_model.py) over the weights decoded by numpy from the packed layout agrees
    with it as closely as it agrees with int8-rounded activations (the runtime's LUT tables round
    activations to int8 too). A wrong layout decode, group, scale or offset gives O(1) errors."""
    from lutllm.engine import Engine
    from reference_model import ReferenceModel, quantize_act_q8

    out = tmp_path / "q3.gguf"
    quantize_model(smollm2_path, out, "3", 32, progress=False)
    ref = ReferenceModel(smollm2_path)
    r = GGUFReader(str(out))
    lay = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)
    t = {x.name: x for x in r.tensors}
    for name, (knd, g, sb, off, k, rows) in zip(_field(r, "lutllm.quant.tensors"), lay):
        dec = decoded_values(*decode_packed(np.asarray(t[name].data).view(np.uint8), knd, g, sb, off, k, rows), knd, g)
        assert ref.w[name].shape == dec.shape
        ref.w[name] = dec.astype(ref.dtype)
    e = Engine(out, n_ctx=64, n_threads=2)
    toks = e.tokenizer.encode("The quick brown fox jumps over the lazy dog.", add_special=True)
    ours = e.eval(toks, all_logits=True).astype(np.float64)
    exact = ref.forward(toks)
    rounded = ref.forward(toks, act_quant=quantize_act_q8)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731

    def kl(p, q):
        p = p - p.max(1, keepdims=True)
        q = q - q.max(1, keepdims=True)
        p -= np.log(np.exp(p).sum(1, keepdims=True))
        q -= np.log(np.exp(q).sum(1, keepdims=True))
        return float((np.exp(p) * (p - q)).sum(1).mean())

    assert rel(ours, exact) < 2 * rel(rounded, exact) + 0.01, (rel(ours, exact), rel(rounded, exact))
    assert kl(exact, ours) < 0.03, kl(exact, ours)


def _c_api_matches_python(path, toks):
    """Load path with liblutllm.so, check its last-token logits against the Python API's; -> (ffi, lib)."""
    cffi = pytest.importorskip("cffi")
    from test_c_api import CDEF, OK, _library_path
    from lutllm.engine import Engine

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    lib = ffi.dlopen(_library_path())
    err = ffi.new("const char**")
    m = lib.lutllm_load(str(path).encode(), 64, 2, err)
    assert m != ffi.NULL, ffi.string(err[0]).decode()
    try:
        logits = ffi.new("float[]", lib.lutllm_n_vocab(m))
        assert lib.lutllm_eval(m, ffi.new("int32_t[]", toks), len(toks), 0, logits) == OK
        ours = np.frombuffer(ffi.buffer(logits), dtype=np.float32)
        e = Engine(path, n_ctx=64, n_threads=2)
        np.testing.assert_allclose(ours, e.eval(toks)[-1], rtol=0, atol=1e-4)
    finally:
        lib.lutllm_free(m)
    return ffi, lib


def test_c_api_loads_packed_files(smollm2_q4, tmp_path):
    """liblutllm.so reads the lutllm.quant.* layouts itself: same logits as the Python API on the packed
    file, and a clear error for a corrupt layout."""
    ffi, lib = _c_api_matches_python(smollm2_q4, [1, 504, 3458, 282, 4649, 314])
    err = ffi.new("const char**")
    bad = tmp_path / "bad.gguf"
    _corrupt(pathlib.Path(smollm2_q4), bad, "lutllm.quant.layouts", 1, 64)
    assert lib.lutllm_load(str(bad).encode(), 64, 1, err) == ffi.NULL
    assert "bytes given" in ffi.string(err[0]).decode()


@pytest.mark.parametrize("bits", ["1", "2", "3", "4", "ternary"])
def test_mix_gives_the_sensitive_tensors_more_bits(tiny, tmp_path, bits):
    """--mix: attn_v gets 2 more bits, ffn_down and attn_output 1 more (capped at 4; 4-bit and ternary
    unchanged), and each tensor holds exactly a numpy round-to-nearest at its own bit width."""
    extra = {"attn_v": 2, "ffn_down": 1, "attn_output": 1}
    out = tmp_path / "mix.gguf"
    rep = quantize_model(tiny, out, bits, 32, method="rtn", progress=False, threads=2, mix=True)
    r = GGUFReader(str(out))
    lay = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)
    src, dst = _reader_tensors(tiny), {t.name: t for t in r.tensors}
    base = KINDS[bits]
    seen = set()
    for name, (knd, g, sb, off, k, rows) in zip(_field(r, "lutllm.quant.tensors"), lay):
        role = name.split(".")[2]
        want = base if base > 3 else min(4, base + extra.get(role, 0))
        assert knd == want, (name, knd, want)
        seen.add(int(knd))
        codes, s, o = decode_packed(np.asarray(dst[name].data).view(np.uint8), knd, g, sb, off, k, rows)
        ref_w = dequantize(src[name].data, src[name].tensor_type).reshape(rows, k)
        rc, rs, _ = numpy_rtn(ref_w, int(knd), int(g))
        np.testing.assert_array_equal(s, rs.reshape(rows, -1), err_msg=name)
        np.testing.assert_array_equal(codes, rc, err_msg=name)
    assert len(seen) == (1 if base > 3 else len({min(4, base + e) for e in (0, 1, 2)}))
    assert rep.label.endswith("-mix") == (base <= 3)


# ---------------------------------------------------------------------------- k-quant sub-scales (--scales kq)
KQ_FMT = {2: (2, 16, 3, 1), 3: (3, 16, 1, 0), 4: (4, 32, 1, 1)}  # lut.h: Q2_K-, Q3_K- and Q4_K-like layouts


def decode_packed_kq(buf: np.ndarray, kind: int, group: int, scale_bytes: int, has_offset: int, k: int, rows: int):
    """Decode the k-quant layout of lut.h with numpy: per row block, super-blocks of 256 weights, each a
    header (16 fp16 d, then 16 fp16 dmin with an offset) and its group blocks (tiles as decode_packed
    reads them, then the sub-scales: one byte sc | m << 4 (scale_bytes 3), 16 uint8 sc + 16 uint8 m,
    or 16 int8 sc) -> (codes (rows, k), sc (rows, k/G), m, d (rows, k/256), dmin)."""
    G, gps, nsb, nrb = group, 256 // group, k // 256, -(-rows // 16)
    hdr, tile = 32 * (1 + has_offset), 2 * G * kind
    sub = 16 if scale_bytes == 3 else 16 * (1 + has_offset)
    b = np.asarray(buf, dtype=np.uint8).reshape(nrb, nsb, hdr + gps * (tile + sub))
    d = b[:, :, :32].copy().view(np.float16).astype(np.float32)
    dmin = b[:, :, 32:64].copy().view(np.float16).astype(np.float32) if has_offset else np.zeros_like(d)
    grp = b[:, :, hdr:].reshape(nrb, nsb, gps, tile + sub)
    # the tiles as an fp16-scale layout without offsets (zero scales) for decode_packed
    fake = np.concatenate([grp[..., :tile], np.zeros((nrb, nsb, gps, 32), np.uint8)], axis=-1)
    codes, _, _ = decode_packed(fake.reshape(-1), kind, G, 2, 0, k, rows)
    s = grp[..., tile:]
    if scale_bytes == 3:
        sc, m = (s & 15).astype(np.int64), (s >> 4).astype(np.int64)
    elif has_offset:
        sc, m = s[..., :16].astype(np.int64), s[..., 16:].astype(np.int64)
    else:
        sc, m = s.view(np.int8).astype(np.int64), np.zeros(s.shape, np.int64)
    per_row = lambda a: a.transpose(0, 3, 1, 2).reshape(nrb * 16, nsb * gps)[:rows]  # noqa: E731
    rowwise = lambda a: a.transpose(0, 2, 1).reshape(nrb * 16, nsb)[:rows]  # noqa: E731
    return codes, per_row(sc), per_row(m), rowwise(d), rowwise(dmin)


def decoded_values_kq(codes, sc, m, d, dmin, kind, group):
    """value = (d * sc) * q - (dmin * m), or (d * sc) * (q - 4): the fp32 operations of lut.h."""
    gps = 256 // group
    s = np.repeat(np.repeat(d, gps, axis=1) * sc.astype(np.float32), group, axis=1)
    if kind == 3:
        return s * (codes - 4).astype(np.float32)
    o = -(np.repeat(dmin, gps, axis=1) * m.astype(np.float32))
    return s * codes.astype(np.float32) + np.repeat(o, group, axis=1)


def _nmse(w, d):
    w, d = w.astype(np.float64), d.astype(np.float64)
    return float(((d - w) ** 2).sum() / (w ** 2).sum())


def _kq_check(w, kind, method=1):
    """Quantize w with lut_quantize_kq; check the stored bytes against the numpy decoder, the ranges of
    codes and sub-scales, and the reported error; -> NMSE of the decoded weights."""
    from lutllm import _core

    rows, k = w.shape
    buf, fmt, sq_err = _core.lut_quantize_kq(w, kind, method)
    assert tuple(fmt) == KQ_FMT[kind] and buf.size == _core.lut_packed_bytes(fmt, rows, k)
    ours = _core.lut_unpack(buf, fmt, rows, k)
    codes, sc, m, d, dmin = decode_packed_kq(buf, *fmt, k, rows)
    np.testing.assert_array_equal(ours, decoded_values_kq(codes, sc, m, d, dmin, kind, fmt[1]))
    assert codes.min() >= 0 and codes.max() <= (1 << kind) - 1
    assert (d >= 0).all() and (dmin >= 0).all() and np.isfinite(d).all() and np.isfinite(dmin).all()
    if kind == 2:
        assert sc.max() <= 15 and m.max() <= 15
    elif kind == 3:
        assert sc.min() >= -127 and sc.max() <= 127 and (m == 0).all() and (dmin == 0).all()
    assert sc.min() >= (-127 if kind == 3 else 0)
    err = float(((ours.astype(np.float64) - w) ** 2).sum())
    assert abs(sq_err - err) <= 1e-4 * err + 1e-12, (sq_err, err)  # the error of what is stored
    return _nmse(w, ours)


# measured NMSE (gaussian; SmolLM2 ffn_down), plain squared error although the search weighs it
# (lut.h), with a margin: 2 bits 0.070 / 0.072, 3 bits 0.021 / 0.022, 4 bits 0.0048 / 0.00001 (the
# Q4_1 source's own grid); fp16 W2 g32 mse: 0.089 / 0.093
KQ_BOUNDS = {2: 0.075, 3: 0.023, 4: 0.0052}


@pytest.mark.parametrize("kind", [2, 3, 4])
def test_kq_quantizer_on_gaussian_weights(kind):
    """Exact to the format, within the stated bound, and (2 bits) below the fp16 W2 g32 mse path at a
    smaller size (2.625 against 3 bits/weight); the mse method beats round to nearest."""
    from lutllm import _core

    rows, k = 40, 768  # 40 rows: a padded last row block; 3 super-blocks
    w = np.random.default_rng(kind).standard_normal((rows, k)).astype(np.float32)
    w[3] *= 1e-3  # a row of much smaller weights: d, dmin per row keep their precision
    w[5, :256] = 0  # an all-zero super-block decodes to zeros
    nm = _kq_check(w, kind)
    assert nm < KQ_BOUNDS[kind], nm
    assert _nmse(w, np.zeros_like(w)) == 1 and _kq_check(w, kind, method=0) > nm
    buf, fmt = _core.lut_quantize(w, 2, 32, 1)
    assert kind > 2 or nm < 0.85 * _nmse(w, _core.lut_unpack(buf, fmt, rows, k))
    buf, _, _ = _core.lut_quantize_kq(w, kind)
    np.testing.assert_array_equal(_core.lut_unpack(buf, KQ_FMT[kind], rows, k)[5, :256], 0)
    assert _nmse(w[3:4], _core.lut_unpack(buf, KQ_FMT[kind], rows, k)[3:4]) < 1.5 * KQ_BOUNDS[kind]


def _smollm2_ffn_down(path, rows=256):
    r = GGUFReader(path)
    t = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight")
    k = int(t.shape[0])
    return np.ascontiguousarray(dequantize(t.data, t.tensor_type).reshape(-1, k)[:rows]).astype(np.float32)


@pytest.mark.parametrize("kind", [2, 3, 4])
def test_kq_quantizer_on_real_weights(smollm2_path, kind):
    """SmolLM2's ffn_down (Q4_1 in the source, decoded to float; k = 1536): exact to the format, within
    the bound, and at 2 bits clearly below the fp16 W2 g32 mse path."""
    from lutllm import _core

    w = _smollm2_ffn_down(smollm2_path)
    nm = _kq_check(w, kind)
    assert nm < KQ_BOUNDS[kind], nm
    if kind == 2:
        buf, fmt = _core.lut_quantize(w, 2, 32, 1)
        assert nm < 0.85 * _nmse(w, _core.lut_unpack(buf, fmt, *w.shape)), nm


def test_kq_quantizer_argument_errors():
    from lutllm import _core

    w = np.zeros((16, 512), np.float32)
    for kind in (1, 5):
        with pytest.raises(ValueError, match="kind 2, 3 or 4"):
            _core.lut_quantize_kq(w, kind)
    with pytest.raises(ValueError, match="super-block 256"):
        _core.lut_quantize_kq(np.zeros((16, 384), np.float32), 2)
    with pytest.raises(ValueError, match="needed"):
        _core.lut_quantize_kq(w, 2, 1, np.zeros(10, np.uint8))


@pytest.fixture(scope="module")
def kq_model(tmp_path_factory):
    """A random qwen2 GGUF whose k are multiples of 256 except ffn_down (d_ff = 384)."""
    from synthetic_models import write_model

    return write_model(tmp_path_factory.mktemp("kq") / "src.gguf", "qwen2", d=256, d_ff=384)


@pytest.mark.parametrize("bits,mix", [("2", True), ("3", False), ("4", False)])
def test_kq_model_loads_and_matches_the_numpy_forward(kq_model, tmp_path, bits, mix):
    """--scales kq end to end: layouts per tensor (mix: attn_v W4 g32 kq, attn_output W3 g16 kq; k % 256
    != 0 falls back to fp16 g32), bytes that the numpy decoders read as lut_unpack does, and runtime
    logits that agree with a numpy float forward pass over those decoded weights as closely as the
    int8-rounded-activation reference does (the tolerance of the other packed-file tests)."""
    from lutllm import _core
    from lutllm.engine import Engine
    from lutllm.gguf_file import GGUFFile
    from reference_model import ReferenceModel, mean_kl, quantize_act_q8, rel_error

    out = tmp_path / "kq.gguf"
    rep = quantize_model(kq_model, out, bits, progress=False, threads=2, mix=mix, scales="kq")
    base = int(bits)
    assert rep.label == f"w{bits}kq" + ("-mix" if mix else "")
    assert rep.group_fallback == [f"blk.{i}.ffn_down.weight: g32" for i in range(2)]
    r = GGUFReader(str(out))
    lay = np.asarray(_field(r, "lutllm.quant.layouts")).reshape(-1, 6)
    t = {x.name: x for x in r.tensors}
    ref = ReferenceModel(str(kq_model))
    extra = {"attn_v": 2, "ffn_down": 1, "attn_output": 1} if mix else {}
    for name, (knd, g, sb, off, k, rows) in zip(_field(r, "lutllm.quant.tensors"), lay):
        role = name.split(".")[2]
        assert knd == min(4, base + extra.get(role, 0)), name
        buf = np.ascontiguousarray(np.asarray(t[name].data).view(np.uint8).reshape(-1))
        fmt = (int(knd), int(g), int(sb), int(off))
        if role == "ffn_down":
            assert fmt == (knd, 32, 2, 1)
            dec = decoded_values(*decode_packed(buf, knd, g, sb, off, k, rows), knd, g)
        else:
            assert fmt == KQ_FMT[int(knd)], name
            dec = decoded_values_kq(*decode_packed_kq(buf, *fmt, int(k), int(rows)), int(knd), int(g))
        np.testing.assert_array_equal(_core.lut_unpack(buf, fmt, int(rows), int(k)), dec, err_msg=name)
        ref.w[name] = dec.astype(ref.dtype)
    assert GGUFFile(out).tensors["blk.0.attn_q.weight"].type_name == f"LUT_W{bits}KQ"
    e = Engine(out, n_ctx=64, n_threads=2)
    assert list(e._model.linear_paths().values()).count("lut") == 14  # all but the tied F16 head
    toks = [1, 5, 17, 99, 200, 3, 44, 300, 7, 12]
    ours = e.eval(toks, all_logits=True).astype(np.float64)
    exact = ref.forward(toks)
    rounded = ref.forward(toks, act_quant=quantize_act_q8)
    assert rel_error(ours, exact) < 2 * rel_error(rounded, exact) + 0.01, (rel_error(ours, exact),
                                                                           rel_error(rounded, exact))
    assert mean_kl(exact, ours) < 0.03


def test_kq_with_fp16_scales_is_unchanged(kq_model, tmp_path):
    """Without --scales the output is today's fp16 layout, byte for byte the same as scales="fp16"."""
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    quantize_model(kq_model, a, "2", progress=False, threads=2)
    quantize_model(kq_model, b, "2", 32, progress=False, threads=2, scales="fp16")
    assert a.read_bytes() == b.read_bytes()
    lay = np.asarray(_field(GGUFReader(str(a)), "lutllm.quant.layouts")).reshape(-1, 6)
    assert {tuple(x[:4]) for x in lay} == {(2, 32, 2, 1)}


@pytest.mark.parametrize("extra,msg", [
    (["--bits", "1", "--scales", "kq"], "--scales kq takes --bits 2, 3 or 4"),
    (["--bits", "ternary", "--scales", "kq"], "--scales kq takes --bits 2, 3 or 4"),
    (["--bits", "2", "--scales", "kq", "--group", "64"], "--group does not apply with --scales kq"),
    (["--bits", "4", "--scales", "kq", "--group", "128"], "--group does not apply with --scales kq"),
    (["--bits", "2", "--scales", "q4"], "Invalid value for '--scales'"),
])
def test_cli_kq_bad_options(kq_model, tmp_path, extra, msg):
    r = _cli(kq_model, tmp_path / "o.gguf", *extra)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_kq_api_errors(kq_model, tmp_path):
    for bits in ("1", "ternary"):
        with pytest.raises(QuantizeError, match="--scales kq takes --bits 2, 3 or 4"):
            quantize_model(kq_model, tmp_path / "o.gguf", bits, scales="kq", progress=False)
    with pytest.raises(QuantizeError, match="--group does not apply"):
        quantize_model(kq_model, tmp_path / "o.gguf", "3", 32, scales="kq", progress=False)
    with pytest.raises(QuantizeError, match="scales must be one of"):
        quantize_model(kq_model, tmp_path / "o.gguf", "3", scales="fp32", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_kq_quantizes_and_info_shows_it(kq_model, tmp_path):
    """The CLI path, `lutllm info` on the result (layout names, sizes) and the memory estimate: packed
    k-quant tensors are mapped as they are (their exact byte size), not repacked."""
    from lutllm.gguf_file import GGUFFile, LutLayout

    out = tmp_path / "o.gguf"
    r = _cli(kq_model, out, "--bits", "2", "--scales", "kq", "--mix", "--method", "rtn")
    assert r.returncode == 0, r.stderr
    assert "to w2kq-mix (rtn)" in r.stdout and "fp16 scales where k is not a multiple of 256" in r.stdout
    info = subprocess.run([sys.executable, "-m", "lutllm.cli", "info", "-m", str(out)], capture_output=True,
                          text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    assert "w2kq" in info.stdout and "w3kq" in info.stdout and "w4kq" in info.stdout, info.stdout
    g = GGUFFile(out)
    t = g.tensors["blk.0.attn_q.weight"]
    assert t.lut == LutLayout(2, 16, 3, 1) and t.nbytes == 16 * 1344  # 256 rows x 256: Q2_K's 2.625 bits
    assert g.tensors["blk.0.attn_output.weight"].nbytes == 16 * 1824
    assert g.tensors["blk.0.attn_v.weight"].nbytes == 128 // 16 * 2368
    from lutllm.arch import model_config
    from lutllm.memory import estimate_memory

    est = estimate_memory(g, model_config(g.metadata, g.tensors, str(out)), 64)
    assert est.n_repacked == 0 and est.repack == 0  # mapped as stored, at their exact size
    assert est.weights_mapped_hot == est.weights_file == sum(t.nbytes for t in g.tensors.values())


def test_kq_layout_sizes_and_checks():
    """LutLayout reads k-quant layouts with the runtime's byte counts and names what is wrong."""
    from lutllm import _core
    from lutllm.gguf_file import LutLayout

    for fmt in KQ_FMT.values():
        lay = LutLayout(*fmt)
        assert lay.is_kq and lay.check(40, 512) == ""
        assert lay.packed_bytes(40, 512) == _core.lut_packed_bytes(fmt, 40, 512)
    assert LutLayout(2, 16, 3, 1).row_block_bytes(256) == 1344 and LutLayout(3, 16, 1, 0).row_block_bytes(256) == 1824
    assert "super-block 256" in LutLayout(2, 16, 3, 1).check(16, 384)
    assert "need has_offset = 1" in LutLayout(2, 16, 3, 0).check(16, 256)
    assert "not k-quant sub-scales" in LutLayout(5, 32, 1, 0).check(16, 256)
    assert not LutLayout(4, 32, 2, 1).is_kq and LutLayout(4, 32, 2, 1).label == "w4g32"


def test_flash_convert_refuses_packed_sources(kq_model, tmp_path):
    """`lutllm convert --flash` cuts bundles from GGUF blocks: a packed file (k-quant or not) is refused
    by name instead of being read as weights."""
    from lutllm.convert import ConvertError, convert_flash

    out = tmp_path / "kq.gguf"
    quantize_model(kq_model, out, "2", progress=False, threads=2, scales="kq")
    with pytest.raises(ConvertError, match="is already packed"):
        convert_flash(out, tmp_path / "f.gguf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kq.gguf"]


def test_c_api_loads_kq_files(kq_model, tmp_path):
    """liblutllm.so reads k-quant layouts from lutllm.quant.* itself (runtime/c_api.cc): the same logits
    as the Python API on the same file."""
    out = tmp_path / "kq.gguf"
    quantize_model(kq_model, out, "2", progress=False, threads=2, mix=True, scales="kq")
    _c_api_matches_python(out, [1, 5, 17, 99, 200, 3])


def test_summary_lists_many_fallbacks_per_role():
    """A model whose every layer falls back (SmolLM2: k = 576) gets one entry per role, not 180 names."""
    from lutllm.quantize import QuantizeReport

    rep = QuantizeReport("a", "b", "w2kq", "mse")
    rep.group_fallback = [f"blk.{i}.{r}.weight: g32" for i in range(30) for r in ("attn_q", "ffn_up")]
    line = rep.summary().splitlines()[1]
    assert line.endswith("blk.*.attn_q.weight: g32 (30 layers), blk.*.ffn_up.weight: g32 (30 layers)"), line
    rep.group_fallback = ["blk.0.ffn_down.weight: g32", "blk.1.ffn_down.weight: g32"]
    assert rep.summary().splitlines()[1].endswith("blk.0.ffn_down.weight: g32, blk.1.ffn_down.weight: g32")
