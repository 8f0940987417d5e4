"""Deterministic tests of lutllm.gguf_file: the real SmolLM2 file against gguf.GGUFReader,
zero-copy tensor views, and one crafted corruption per validation rule with its message.

Not the fuzzer (test_gguf_fuzz.py). Crafted files come from a byte encoder written here from
the GGUF spec, independent of the reader under test; valid ones are cross-checked with
gguf.GGUFReader.
"""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

from lutllm.gguf_file import GGUFError, GGUFFile, TensorInfo, describe

VT = gguf.GGUFValueType
QT = gguf.GGMLQuantizationType


# --------------------------------------------------------------------------- spec encoder
def s(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, v: int) -> bytes:
    return kv(key, VT.UINT32, struct.pack("<I", v))


def kv_str(key: str, v: str | bytes) -> bytes:
    return kv(key, VT.STRING, s(v))


def kv_arr(key: str, item_type: int, n: int, items: bytes) -> bytes:
    return kv(key, VT.ARRAY, struct.pack("<IQ", item_type, n) + items)


def tinfo(name: str | bytes, dims, ggml_type: int, rel_offset: int, n_dims: int | None = None) -> bytes:
    n = len(dims) if n_dims is None else n_dims
    return (s(name) + struct.pack("<I", n) + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", ggml_type, rel_offset))


def gguf_bytes(kvs, infos, data: bytes = b"", *, magic=b"GGUF", version=3, n_kv=None,
               n_tensors=None, alignment=32, version_fmt="<I") -> bytes:
    head = (magic + struct.pack(version_fmt, version)
            + struct.pack("<QQ", len(infos) if n_tensors is None else n_tensors,
                          len(kvs) if n_kv is None else n_kv)
            + b"".join(kvs) + b"".join(infos))
    head += b"\0" * (-len(head) % alignment)
    return head + data


def f32_data(n: int) -> bytes:
    return np.arange(n, dtype="<f4").tobytes()


def valid_parts():
    """A small valid file: two F32 tensors (4x2 and 8) and a Q8_0 tensor (32 x 2)."""
    kvs = [kv_str("general.architecture", "llama"), kv_u32("llama.block_count", 2),
           kv_arr("tokenizer.ggml.tokens", VT.STRING, 3, s("a") + s("bb") + s("\u00e9")),
           kv_arr("tokenizer.ggml.token_type", VT.INT32, 3, struct.pack("<3i", 1, 2, 3)),
           kv("flag", VT.BOOL, b"\x01"), kv("pi", VT.FLOAT32, struct.pack("<f", 3.5))]
    infos = [tinfo("a", [4, 2], QT.F32, 0), tinfo("b", [8], QT.F32, 32),
             tinfo("q", [32, 2], QT.Q8_0, 64)]
    data = f32_data(8) + f32_data(8) + bytes(range(68))
    return kvs, infos, data


@pytest.fixture
def write(tmp_path):
    def _write(b: bytes, name: str = "model.gguf") -> str:
        p = tmp_path / name
        p.write_bytes(b)
        return str(p)
    return _write


def expect_error(path: str, *fragments: str) -> str:
    with pytest.raises(GGUFError) as ei:
        GGUFFile(path)
    msg = str(ei.value)
    assert msg.startswith(path + ": "), msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    return msg


# --------------------------------------------------------------------------- valid files
def test_valid_crafted_file_matches_spec_and_gguf_reader(write):
    path = write(gguf_bytes(*valid_parts()))
    g = GGUFFile(path)
    assert g.version == 3 and g.alignment == 32
    assert g.metadata["general.architecture"] == "llama"
    assert g.metadata["llama.block_count"] == 2 and type(g.metadata["llama.block_count"]) is int
    assert g.metadata["tokenizer.ggml.tokens"] == ["a", "bb", "\u00e9"]
    assert g.metadata["tokenizer.ggml.token_type"].tolist() == [1, 2, 3]
    assert g.metadata["flag"] is True
    assert g.metadata["pi"] == 3.5
    assert g.metadata_types["tokenizer.ggml.tokens"] == (VT.ARRAY, VT.STRING)
    assert list(g.tensors) == ["a", "b", "q"]
    r = gguf.GGUFReader(path)
    assert g.data_offset == r.data_offset
    for rt in r.tensors:
        t = g.tensors[rt.name]
        assert (t.ggml_type, t.shape, t.offset, t.nbytes) == \
            (int(rt.tensor_type), tuple(int(x) for x in rt.shape), rt.data_offset, rt.n_bytes)
    assert g.tensor_data("a").shape == (2, 4)
    np.testing.assert_array_equal(g.tensor_data("a").ravel(), np.arange(8, dtype=np.float32))
    assert g.tensor_data("q").dtype == np.uint8 and g.tensor_data("q").tobytes() == bytes(range(68))


def test_version_2_and_custom_alignment(write):
    kvs = [kv_u32("general.alignment", 64)]
    infos = [tinfo("a", [4], QT.F32, 0), tinfo("b", [4], QT.F32, 64)]
    data = f32_data(4) + b"\0" * 48 + f32_data(4)
    g = GGUFFile(write(gguf_bytes(kvs, infos, data, version=2, alignment=64)))
    assert g.version == 2 and g.alignment == 64 and g.data_offset % 64 == 0
    assert g.tensors["b"].offset == g.data_offset + 64


def test_gguf_writer_file_roundtrip(tmp_path):
    path = str(tmp_path / "w.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.merges", ["a b", "c d"])
    w.add_array("floats", [0.5, 1.5])
    w.add_bool("yes", True)
    w.add_uint64("big", 2**40)
    w.add_int8("neg", -3)
    w.add_float64("dbl", 0.1)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    q = np.arange(3 * 2 * 34, dtype=np.uint8).reshape(3, 68)  # 3 rows of 2 Q8_0 blocks
    w.add_tensor("x", x)
    w.add_tensor("q", q, raw_dtype=QT.Q8_0)
    w.add_tensor("h", x.astype(np.float16))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    g = GGUFFile(path)
    m = g.metadata
    assert (m["general.name"], m["tokenizer.ggml.merges"], m["yes"], m["big"], m["neg"], m["dbl"]) \
        == ("tiny", ["a b", "c d"], True, 2**40, -3, 0.1)
    assert m["floats"].dtype == np.float32 and m["floats"].tolist() == [0.5, 1.5]
    np.testing.assert_array_equal(g.tensor_data("x"), x)
    np.testing.assert_array_equal(g.tensor_data("h"), x.astype(np.float16))
    assert g.tensors["q"].shape == (64, 3) and g.tensors["q"].type_name == "Q8_0"
    assert g.tensor_data("q").tobytes() == q.tobytes()


def test_invalid_utf8_value_keeps_bytes(write):
    g = GGUFFile(write(gguf_bytes([kv_str("k", b"a\xffb")], [])))
    assert g.metadata["k"].encode("utf-8", "surrogateescape") == b"a\xffb"


# --------------------------------------------------------------------------- corruptions
def test_missing_empty_and_tiny_files(tmp_path, write):
    missing = str(tmp_path / "nope.gguf")
    expect_error(missing, "cannot open")
    expect_error(write(b""), "0 bytes is too small")
    expect_error(write(b"GGUF\x03\0\0\0"), "too small")


def test_bad_magic(write):
    expect_error(write(gguf_bytes(*valid_parts(), magic=b"GGML")), "not a GGUF file", "b'GGML'")


@pytest.mark.parametrize("version", [0, 1, 4, 2**32 - 1])
def test_unsupported_version(write, version):
    expect_error(write(gguf_bytes(*valid_parts(), version=version)),
                 f"unsupported GGUF version {version}")


def test_big_endian_rejected(write):
    expect_error(write(gguf_bytes(*valid_parts(), version_fmt=">I")), "big-endian")


def test_huge_kv_count(write):
    expect_error(write(gguf_bytes(*valid_parts(), n_kv=2**60)),
                 f"metadata kv count {2**60} is impossible")


def test_huge_tensor_count(write):
    expect_error(write(gguf_bytes(*valid_parts(), n_tensors=2**64 - 1)),
                 f"tensor count {2**64 - 1} is impossible")


def test_truncated_inside_string_array(write):
    b = gguf_bytes([kv_arr("tokenizer.ggml.tokens", VT.STRING, 3, s("a" * 40) + s("bb") + s("c"))], [])
    cut = b.index(b"bb") + 1
    expect_error(write(b[:cut]), "item 1 of metadata 'tokenizer.ggml.tokens'",
                 "claims 2 bytes but only 1 remain")


def test_huge_string_length(write):
    kvs, infos, data = valid_parts()
    kvs[0] = struct.pack("<Q", 2**63) + b"general.architecture" + kvs[0][28:]
    expect_error(write(gguf_bytes(kvs, infos, data)), "key of metadata pair 0 at offset 24",
                 f"claims {2**63} bytes")


def test_huge_array_length(write):
    kvs, infos, data = valid_parts()
    kvs[2] = kv_arr("tokenizer.ggml.tokens", VT.STRING, 2**40, s("a") + s("bb") + s("c"))
    expect_error(write(gguf_bytes(kvs, infos, data)),
                 f"metadata 'tokenizer.ggml.tokens' at offset", f"claims {2**40} STRING items")
    kvs[2] = kv_arr("tokenizer.ggml.tokens", VT.UINT8, 2**40, b"abc")
    expect_error(write(gguf_bytes(kvs, infos, data)), f"claims {2**40} UINT8 items")


def test_unknown_value_type(write):
    kvs, infos, data = valid_parts()
    kvs[1] = kv("llama.block_count", 13, struct.pack("<I", 2))
    expect_error(write(gguf_bytes(kvs, infos, data)),
                 "metadata 'llama.block_count'", "unknown value type 13")
    kvs[1] = kv_arr("llama.block_count", 99, 1, b"x")
    expect_error(write(gguf_bytes(kvs, infos, data)), "array of unknown value type 99")


def test_nested_array(write):
    kvs, infos, data = valid_parts()
    kvs[1] = kv_arr("nest", VT.ARRAY, 1, struct.pack("<IQ", VT.UINT8, 1) + b"x")
    expect_error(write(gguf_bytes(kvs, infos, data)), "'nest'", "array of arrays")


def test_invalid_bool(write):
    kvs, infos, data = valid_parts()
    kvs[4] = kv("flag", VT.BOOL, b"\x02")
    expect_error(write(gguf_bytes(kvs, infos, data)), "'flag' = 2 is not a valid bool")
    kvs[4] = kv_arr("flag", VT.BOOL, 3, b"\x00\x01\x07")
    expect_error(write(gguf_bytes(kvs, infos, data)), "item 2 is 7, not a valid bool")


def test_duplicate_and_bad_keys(write):
    kvs, infos, data = valid_parts()
    expect_error(write(gguf_bytes(kvs + [kv_u32("llama.block_count", 3)], infos, data)),
                 "duplicate metadata key 'llama.block_count'")
    expect_error(write(gguf_bytes([kv(b"k\xff", VT.UINT32, b"\0" * 4)] + kvs, infos, data)),
                 "key of metadata pair 0", "not valid UTF-8")
    expect_error(write(gguf_bytes([kv(b"", VT.UINT32, b"\0" * 4)] + kvs, infos, data)),
                 "metadata pair 0 at offset 24 has an empty key")


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_alignment_not_power_of_two(write, alignment):
    kvs, infos, data = valid_parts()
    expect_error(write(gguf_bytes([kv_u32("general.alignment", alignment)] + kvs, infos, data)),
                 f"'general.alignment' = {alignment} is not a power of two")


def test_alignment_wrong_type(write):
    kvs, infos, data = valid_parts()
    expect_error(write(gguf_bytes([kv_str("general.alignment", "32")] + kvs, infos, data)),
                 "'general.alignment' must be an integer, got STRING")


def test_unknown_tensor_type(write):
    kvs, infos, data = valid_parts()
    infos[2] = tinfo("q", [32, 2], 4, 64)  # 4 was Q4_2, removed from ggml long ago
    expect_error(write(gguf_bytes(kvs, infos, data)), "tensor 'q' has unknown ggml type id 4")
    infos[2] = tinfo("q", [32, 2], 2**32 - 1, 64)
    expect_error(write(gguf_bytes(kvs, infos, data)), f"unknown ggml type id {2**32 - 1}")


@pytest.mark.parametrize("n_dims", [0, 5, 2**31])
def test_bad_n_dims(write, n_dims):
    kvs, infos, data = valid_parts()
    infos[1] = tinfo("b", [8], QT.F32, 32, n_dims=n_dims)
    expect_error(write(gguf_bytes(kvs, infos, data)), f"tensor 'b' has n_dims {n_dims}")


def test_zero_dim(write):
    kvs, infos, data = valid_parts()
    infos[0] = tinfo("a", [4, 0], QT.F32, 0)
    expect_error(write(gguf_bytes(kvs, infos, data)), "tensor 'a' has dim 1 = 0")


def test_dims_overflow(write):
    kvs, infos, data = valid_parts()
    infos[0] = tinfo("a", [2**32, 2**32], QT.F32, 0)
    expect_error(write(gguf_bytes(kvs, infos, data)), "tensor 'a' shape", "overflows")


def test_ne0_not_multiple_of_block(write):
    kvs, infos, data = valid_parts()
    infos[2] = tinfo("q", [48, 2], QT.Q8_0, 64)
    expect_error(write(gguf_bytes(kvs, infos, data)), "ne0 = 48, not a multiple of its block size 32")


def test_misaligned_offset(write):
    kvs, infos, data = valid_parts()
    infos[1] = tinfo("b", [8], QT.F32, 36)
    expect_error(write(gguf_bytes(kvs, infos, data)),
                 "tensor 'b' data offset 36", "not a multiple of the alignment 32")


def test_tensor_past_end_of_file(write):
    kvs, infos, data = valid_parts()
    b = gguf_bytes(kvs, infos, data)
    data_offset = len(gguf_bytes(kvs, infos))
    path = write(b[:-10])
    expect_error(path, f"tensor 'q' data [offset {data_offset + 64}, 68 bytes] extends past end "
                       f"of file (size {len(b) - 10})")
    infos[1] = tinfo("b", [8], QT.F32, 2**64 - 32)
    expect_error(write(gguf_bytes(kvs, infos, data)), "tensor 'b' data", "extends past end of file")


def test_overlapping_tensors(write):
    kvs, infos, data = valid_parts()
    infos[1] = tinfo("b", [16], QT.F32, 0)
    expect_error(write(gguf_bytes(kvs, infos, data)), "overlaps tensor")


def test_duplicate_tensor_name(write):
    kvs, infos, data = valid_parts()
    infos[1] = tinfo("a", [8], QT.F32, 32)
    expect_error(write(gguf_bytes(kvs, infos, data)), "duplicate tensor name 'a'")


def test_bad_tensor_names(write):
    kvs, infos, data = valid_parts()
    infos[1] = tinfo("x" * 65, [8], QT.F32, 32)
    expect_error(write(gguf_bytes(kvs, infos, data)), "longer than 64 bytes")
    infos[1] = tinfo("", [8], QT.F32, 32)
    expect_error(write(gguf_bytes(kvs, infos, data)), "tensor 1 at offset", "empty name")


def test_data_section_past_end(write):
    kvs, infos, _ = valid_parts()
    b = gguf_bytes(kvs, infos, alignment=1)
    expect_error(write(b), "tensor data section would start at offset")


def test_unknown_tensor_lookup(write):
    g = GGUFFile(write(gguf_bytes(*valid_parts())))
    with pytest.raises(GGUFError, match="no tensor named 'zz'"):
        g.tensor_data("zz")
    with pytest.raises(GGUFError, match="required metadata key 'nope' is missing"):
        g.require("nope")
    with pytest.raises(GGUFError, match="'llama.block_count' should be str, got int"):
        g.require("llama.block_count", str)
    with pytest.raises(GGUFError, match="'flag' should be int, got bool"):
        g.require("flag", int)
    assert g.require("llama.block_count", int) == 2


# --------------------------------------------------------------------------- the real file
@pytest.fixture(scope="module")
def real(smollm2_path):
    return GGUFFile(smollm2_path)


@pytest.fixture(scope="module")
def reader(smollm2_path):
    return gguf.GGUFReader(smollm2_path)


def test_real_file_matches_gguf_reader(real, reader):
    assert real.version == 3
    assert real.metadata["general.architecture"] == "llama"
    assert real.metadata["llama.block_count"] == 30
    assert len(real.metadata["tokenizer.ggml.tokens"]) == 49152
    keys = [k for k in reader.fields if not k.startswith("GGUF.")]
    assert list(real.metadata) == keys
    for k in keys:
        f = reader.fields[k]
        got, want = real.metadata[k], f.contents()
        if f.types[0] == VT.ARRAY and f.types[-1] != VT.STRING:
            assert isinstance(got, np.ndarray)
            np.testing.assert_array_equal(got, np.asarray(want), err_msg=k)
        else:
            assert got == want, k
            assert type(got) is type(want), k
    assert real.data_offset == reader.data_offset
    assert len(real.tensors) == len(reader.tensors) == 272
    for rt in reader.tensors:
        t = real.tensors[rt.name]
        assert t.type_name == rt.tensor_type.name
        assert t.shape == tuple(int(x) for x in rt.shape)
        assert (t.offset, t.nbytes) == (rt.data_offset, rt.n_bytes)
    f32 = [rt for rt in reader.tensors if rt.tensor_type == QT.F32]
    for rt in f32[:5]:
        np.testing.assert_array_equal(real.tensor_data(rt.name).ravel(), np.asarray(rt.data).ravel())
    q = next(rt for rt in reader.tensors if rt.tensor_type == QT.Q4_1)
    assert real.tensor_data(q.name).tobytes() == np.asarray(q.data).tobytes()


def test_real_file_tensor_data_is_zero_copy(real):
    mm = real.mapping
    base = mm.__array_interface__["data"][0]
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "output_norm.weight"):
        t: TensorInfo = real.tensors[name]
        a, b = real.tensor_data(name), real.tensor_data(name)
        assert a.__array_interface__["data"][0] == base + t.offset
        assert np.shares_memory(a, mm) and np.shares_memory(a, b)
        assert a.nbytes == t.nbytes
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a.reshape(-1).view(np.uint8)[0] = 1
    emb = real.tensor_data("token_embd.weight")
    assert emb.dtype == np.uint8 and emb.shape == (49152 * 576 // 32 * 34,)
    norm = real.tensor_data("output_norm.weight")
    assert norm.dtype == np.float32 and norm.shape == (576,)


def test_real_file_describe(real):
    text = describe(real)
    assert "architecture:  llama" in text
    assert "parameters:    134.52M (134515008)" in text
    assert "Q4_1       210 tensors" in text
    assert "(98362432 bytes)" in text
    assert "tokenizer.ggml.tokens" in text and "[49152 str]" in text
    assert len(text) < 8000 and max(len(line) for line in text.splitlines()) < 160
