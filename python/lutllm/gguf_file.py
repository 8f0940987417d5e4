"""Validating, bounded GGUF reader: header, metadata, tensor table, zero-copy tensor views.

It checks and maps a file; it does not dequantize, repack or run anything (the C++ core does).
"""
# Why not gguf.GGUFReader (gguf 0.19), measured on crafted files derived from a valid
# 192-byte GGUFWriter file with one 3-item array:
#   * array item type set to UINT8 and length to 2**40: GGUFReader loops once per claimed item
#     (out-of-range memmap slices come back empty, so it never runs out of input); RSS went
#     209 MiB (2 s) -> 1029 MiB (12 s) -> 2048 MiB (28.7 s) before `timeout` killed it.
#   * same array as STRING items: IndexError; kv_count = 2**60: KeyError ("Duplicate  already
#     in list"); tensor_count = 2**60: a numpy dtype-view ValueError. None names the culprit.
#   * it builds one numpy array per array item: ~3.4 s for SmolLM2's 49152-token vocabulary.
# The parser below checks every count and length against the bytes left before it reads,
# loops or allocates, so work and memory stay proportional to the file size.
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import gguf

__all__ = ["GGUFError", "GGUFFile", "LutLayout", "TensorInfo", "describe"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_TENSOR_NAME = 64          # GGUF spec: tensor names are at most 64 bytes
MAX_KEY_LEN = 65535           # GGUF spec: keys are at most 2**16 - 1 bytes
_I64_MAX = 2**63 - 1

_VT = gguf.GGUFValueType
# value type -> (struct format, size, numpy dtype) for fixed-size values
_FIXED: dict[int, tuple[str, int, Any]] = {
    _VT.UINT8: ("<B", 1, np.dtype("<u1")),
    _VT.INT8: ("<b", 1, np.dtype("<i1")),
    _VT.UINT16: ("<H", 2, np.dtype("<u2")),
    _VT.INT16: ("<h", 2, np.dtype("<i2")),
    _VT.UINT32: ("<I", 4, np.dtype("<u4")),
    _VT.INT32: ("<i", 4, np.dtype("<i4")),
    _VT.FLOAT32: ("<f", 4, np.dtype("<f4")),
    _VT.BOOL: ("<B", 1, np.dtype("<u1")),
    _VT.UINT64: ("<Q", 8, np.dtype("<u8")),
    _VT.INT64: ("<q", 8, np.dtype("<i8")),
    _VT.FLOAT64: ("<d", 8, np.dtype("<f8")),
}
_INT_TYPES = {_VT.UINT8, _VT.INT8, _VT.UINT16, _VT.INT16, _VT.UINT32, _VT.INT32,
              _VT.UINT64, _VT.INT64}
# Smallest encoding of one metadata pair: key length (8) + 1-byte key + type (4) + 1-byte value.
_MIN_KV_BYTES = 8 + 1 + 4 + 1
# Smallest tensor-info record: name length (8) + 1-byte name + n_dims (4) + one dim (8)
# + type (4) + offset (8).
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# Tensor types we can size: the ggml type ids known to the installed `gguf` package.
_KNOWN_TYPES: dict[int, tuple[str, int, int]] = {
    int(t): (t.name, *gguf.GGML_QUANT_SIZES[t])
    for t in gguf.GGMLQuantizationType if t in gguf.GGML_QUANT_SIZES
}
# Types whose data tensor_data() returns with their own dtype (everything else is raw uint8).
_TYPED_VIEWS = {
    int(gguf.GGMLQuantizationType.F32): np.dtype("<f4"),
    int(gguf.GGMLQuantizationType.F16): np.dtype("<f2"),
    int(gguf.GGMLQuantizationType.F64): np.dtype("<f8"),
    int(gguf.GGMLQuantizationType.I8): np.dtype("<i1"),
    int(gguf.GGMLQuantizationType.I16): np.dtype("<i2"),
    int(gguf.GGMLQuantizationType.I32): np.dtype("<i4"),
    int(gguf.GGMLQuantizationType.I64): np.dtype("<i8"),
}


class GGUFError(ValueError):
    """A GGUF file is unreadable or inconsistent; the message names the file and the culprit."""


# ---------------------------------------------------------------- packed LUT tensors
# `lutllm quantize` stores linear weights in the packed table-lookup layout of
# native/include/lutllm/lut.h. Such a tensor is an I8 byte tensor of GGUF shape
# [row_block_bytes, row_blocks] (one ne1 row per block of 16 weight rows), and these keys say how
# to read it (plain GGUF readers see bytes; lutllm sees the logical [k, rows] weight):
#   lutllm.quant.version  UINT32        layout version (LUT_LAYOUT_VERSION)
#   lutllm.quant.method   STRING        how the values were chosen ("rtn", "mse"); informational
#   lutllm.quant.tensors  ARRAY[STRING] names of the packed tensors
#   lutllm.quant.layouts  ARRAY[INT64]  6 per packed tensor, in the same order:
#                                       kind (1..4 bits, 5 ternary), group, scale_bytes (2 fp16,
#                                       4 fp32, 1 / 3 k-quant 8- / 4-bit sub-scales with fp16 d,
#                                       dmin per 256 weights), has_offset (0/1), k (columns), rows
LUT_LAYOUT_VERSION = 1
LUT_KEY_PREFIX = "lutllm.quant."
LUT_KEY_VERSION = "lutllm.quant.version"
LUT_KEY_METHOD = "lutllm.quant.method"
LUT_KEY_TENSORS = "lutllm.quant.tensors"
LUT_KEY_LAYOUTS = "lutllm.quant.layouts"
LUT_ROWS = 16  # rows per row block (kLutRows)
LUT_SCALE_KQ, LUT_SCALE_KQ4 = 1, 3  # scale_bytes of k-quant 8- and 4-bit sub-scales (kLutScaleKQ*)
LUT_SUPER_K = 256  # weights per k-quant super-block (kLutSuperK)
_I8 = int(gguf.GGMLQuantizationType.I8)


@dataclass(frozen=True)
class LutLayout:
    """Format of one packed LUT tensor (LutFormat in lut.h)."""

    kind: int          # 1..4 = bit planes, 5 = ternary
    group: int         # weights per scale (16, 32, 64, 128)
    scale_bytes: int   # 2 = fp16, 4 = fp32 scales / offsets; 1 / 3 = k-quant sub-scales (LUT_SCALE_KQ*)
    has_offset: int    # 0 or 1

    @property
    def fmt(self) -> tuple[int, int, int, int]:
        """The (kind, group, scale_bytes, has_offset) tuple the _core functions take."""
        return (self.kind, self.group, self.scale_bytes, self.has_offset)

    @property
    def is_kq(self) -> bool:
        """k-quant sub-scales: fp16 d (dmin) per 256 weights, small integer sc (m) per group."""
        return self.scale_bytes in (LUT_SCALE_KQ, LUT_SCALE_KQ4)

    @property
    def label(self) -> str:
        """Short name: w4g32, wtg64, ...; k-quant sub-scales w2kq (their group follows from the kind)."""
        kind = "t" if self.kind == 5 else self.kind
        return f"w{kind}kq" if self.is_kq else f"w{kind}g{self.group}"

    @property
    def planes(self) -> int:
        return 2 if self.kind == 5 else self.kind

    def check(self, rows: int, k: int) -> str:
        """Empty if the format and shape are usable, else what is wrong (as lut_check_format)."""
        if self.kind not in (1, 2, 3, 4, 5):
            return f"kind {self.kind} is not 1..4 bits or 5 (ternary)"
        if self.group not in (16, 32, 64, 128):
            return f"group {self.group} is not 16, 32, 64 or 128"
        if self.scale_bytes not in (1, 2, 3, 4):
            return (f"scale_bytes {self.scale_bytes} is not 1 (8-bit k-quant sub-scales), 2 (fp16), "
                    f"3 (4-bit k-quant sub-scales) or 4 (fp32)")
        if self.has_offset not in (0, 1):
            return f"has_offset {self.has_offset} is not 0 or 1"
        if self.kind == 5 and self.has_offset:
            return "ternary weights have no offset"
        if self.kind == 5 and self.is_kq:
            return f"ternary weights take fp16 or fp32 scales, not k-quant sub-scales (scale_bytes {self.scale_bytes})"
        if self.scale_bytes == LUT_SCALE_KQ4 and not self.has_offset:
            return "4-bit k-quant sub-scales (scale_bytes 3) need has_offset = 1"
        if rows <= 0:
            return f"rows = {rows} is not positive"
        if k <= 0 or k % self.group:
            return f"k = {k} is not a positive multiple of the group {self.group}"
        if self.is_kq and k % LUT_SUPER_K:
            return (f"k-quant sub-scales (scale_bytes {self.scale_bytes}) need k a multiple of the super-block "
                    f"{LUT_SUPER_K}, got k = {k}")
        return ""

    def row_block_bytes(self, k: int) -> int:
        """Bytes of one block of 16 rows, from the runtime's own layout arithmetic (lut_packed_bytes,
        lut.h): k // group group blocks, and for k-quant sub-scales a header per 256 weights. Call
        after check()."""
        from . import _core

        return int(_core.lut_packed_bytes(self.fmt, LUT_ROWS, k))

    def stored_shape(self, rows: int, k: int) -> tuple[int, int]:
        """GGUF shape (ne0, ne1) of the I8 tensor holding rows x k packed weights."""
        return (self.row_block_bytes(k), -(-rows // LUT_ROWS))

    def packed_bytes(self, rows: int, k: int) -> int:
        a, b = self.stored_shape(rows, k)
        return a * b


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-table entry. `shape` is in GGUF order (ne0, the contiguous dim, first);
    `offset` is the absolute byte offset of the data in the file.

    A packed LUT tensor (`lut` set) reports its LOGICAL weight shape (k, rows) in `shape`, so that
    shape checks and parameter counts see the weight; `stored_shape` is its GGUF byte shape,
    `ggml_type` the stored type (I8) and `type_name` the layout (e.g. LUT_W4G32)."""

    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    lut: LutLayout | None = None
    stored_shape: tuple[int, ...] | None = None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        """Row-major shape (outermost dim first), as numpy would index the data."""
        return tuple(reversed(self.shape))


def _type_name(vt: int) -> str:
    try:
        return _VT(vt).name
    except ValueError:
        return f"type {vt}"


class _Parser:
    """Cursor over the mapped file; every read checks the bytes left first (see the note on
    gguf.GGUFReader at the top of this file)."""

    def __init__(self, path: str, mv: memoryview, size: int):
        self.path = path
        self.mv = mv
        self.size = size
        self.pos = 0

    def fail(self, msg: str) -> GGUFError:
        return GGUFError(f"{self.path}: {msg}")

    def need(self, n: int, what: str) -> None:
        left = self.size - self.pos
        if n > left:
            raise self.fail(f"{what} at offset {self.pos} needs {n} bytes but only {left} "
                            f"remain (file size {self.size}; truncated or corrupt file)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.mv, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.mv, self.pos)
        self.pos += 8
        return v

    def string(self, what: str, *, strict: bool) -> str:
        start = self.pos
        n = self.u64(f"length of {what}")
        if n > self.size - self.pos:
            raise self.fail(f"{what} at offset {start} claims {n} bytes but only "
                            f"{self.size - self.pos} remain (file size {self.size})")
        raw = self.mv[self.pos:self.pos + n]
        try:
            s = str(raw, "utf-8", "strict" if strict else "surrogateescape")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} at offset {start} is not valid UTF-8 ({e.reason} at byte "
                            f"{e.start})") from None
        self.pos += n
        return s

    def string_array(self, n: int, what: str) -> list[str]:
        # Hot path (vocabularies, merges): locals only, one slice + decode per item.
        # n was checked against the bytes left (>= 8 bytes per item) by the caller.
        mv, size, pos = self.mv, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = [""] * n
        for i in range(n):
            if size - pos < 8:
                self.pos = pos
                self.need(8, f"length of item {i} of {what}")
            (ln,) = unpack(mv, pos)
            pos += 8
            if ln > size - pos:
                raise self.fail(f"item {i} of {what} at offset {pos - 8} claims {ln} bytes but "
                                f"only {size - pos} remain (file size {size})")
            out[i] = str(mv[pos:pos + ln], "utf-8", "surrogateescape")
            pos += ln
        self.pos = pos
        return out


class GGUFFile:
    """A parsed, validated GGUF file mapped read-only into memory.

    Attributes: path, version, metadata (key -> str | int | float | bool | list[str] |
    numpy array), metadata_types (key -> (GGUFValueType, item GGUFValueType or None)),
    tensors (name -> TensorInfo, in file order), alignment, data_offset, file_size.
    String values that are not valid UTF-8 keep their bytes as surrogate escapes
    (`s.encode("utf-8", "surrogateescape")` gives the raw bytes back).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        try:
            self.file_size = os.path.getsize(self.path)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot open ({e.strerror or e})") from None
        if self.file_size < 24:
            raise GGUFError(f"{self.path}: {self.file_size} bytes is too small for a GGUF "
                            f"header (needs at least 24)")
        try:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise GGUFError(f"{self.path}: cannot map file ({e})") from None
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, tuple[gguf.GGUFValueType, gguf.GGUFValueType | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse(_Parser(self.path, memoryview(self._mm), self.file_size))

    # ---------------------------------------------------------------- parsing
    def _parse(self, p: _Parser) -> None:
        magic = bytes(p.mv[0:4])
        if magic != GGUF_MAGIC:
            raise p.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        p.pos = 4
        version = p.u32("version")
        if version not in SUPPORTED_VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            if swapped in SUPPORTED_VERSIONS:
                raise p.fail("big-endian GGUF files are not supported")
            raise p.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        tensor_count = p.u64("tensor count")
        kv_count = p.u64("metadata kv count")
        left = p.size - p.pos
        # Bound both counts by what the remaining bytes could hold before looping on them.
        if kv_count > left // _MIN_KV_BYTES:
            raise p.fail(f"metadata kv count {kv_count} is impossible: {left} bytes after the "
                         f"header hold at most {left // _MIN_KV_BYTES} pairs")
        if tensor_count > left // _MIN_TENSOR_INFO_BYTES or \
                kv_count * _MIN_KV_BYTES + tensor_count * _MIN_TENSOR_INFO_BYTES > left:
            raise p.fail(f"tensor count {tensor_count} is impossible: {left} bytes after the "
                         f"header cannot hold {kv_count} metadata pairs and {tensor_count} "
                         f"tensor infos")

        for i in range(kv_count):
            self._parse_kv(p, i)

        self.alignment = DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            a = self.metadata["general.alignment"]
            vt = self.metadata_types["general.alignment"][0]
            if vt not in _INT_TYPES:
                raise p.fail(f"metadata 'general.alignment' must be an integer, got {vt.name}")
            if a <= 0 or a & (a - 1):
                raise p.fail(f"metadata 'general.alignment' = {a} is not a power of two")
            self.alignment = int(a)

        infos = [self._parse_tensor_info(p, i) for i in range(tensor_count)]
        header_end = p.pos
        self.data_offset = -(-header_end // self.alignment) * self.alignment
        if infos and self.data_offset > self.file_size:
            raise p.fail(f"tensor data section would start at offset {self.data_offset} "
                         f"(header ends at {header_end}, alignment {self.alignment}) past "
                         f"end of file (size {self.file_size})")
        self._place_tensors(p, infos)
        self._apply_lut_layouts(p)

    def _apply_lut_layouts(self, p: _Parser) -> None:
        """Turn the packed tensors named by lutllm.quant.* into logical-shape TensorInfos, checking
        that every layout is valid and agrees with the stored byte tensor."""
        present = [k for k in (LUT_KEY_VERSION, LUT_KEY_TENSORS, LUT_KEY_LAYOUTS) if k in self.metadata]
        if not present:
            return
        if len(present) != 3:
            missing = sorted({LUT_KEY_VERSION, LUT_KEY_TENSORS, LUT_KEY_LAYOUTS} - set(present))
            raise p.fail(f"packed LUT metadata is incomplete: {', '.join(missing)} missing")
        version = self.metadata[LUT_KEY_VERSION]
        if isinstance(version, bool) or not isinstance(version, int):
            raise p.fail(f"metadata {LUT_KEY_VERSION!r} must be an integer, got {_short(version)}")
        if version != LUT_LAYOUT_VERSION:
            raise p.fail(f"packed LUT layout version {version} is not supported (this lutllm reads "
                         f"version {LUT_LAYOUT_VERSION}; the file was written by another lutllm)")
        names = self.metadata[LUT_KEY_TENSORS]
        layouts = self.metadata[LUT_KEY_LAYOUTS]
        if not isinstance(names, list):
            raise p.fail(f"metadata {LUT_KEY_TENSORS!r} must be an array of strings")
        if not isinstance(layouts, np.ndarray) or layouts.dtype.kind not in "iu":
            raise p.fail(f"metadata {LUT_KEY_LAYOUTS!r} must be an array of integers")
        if layouts.size != 6 * len(names):
            raise p.fail(f"metadata {LUT_KEY_LAYOUTS!r} has {layouts.size} values, expected 6 for each "
                         f"of the {len(names)} tensors in {LUT_KEY_TENSORS!r}")
        seen: set[str] = set()
        for i, name in enumerate(names):
            what = f"packed tensor {name!r}"
            if name in seen:
                raise p.fail(f"{what} is listed twice in {LUT_KEY_TENSORS!r}")
            seen.add(name)
            t = self.tensors.get(name)
            if t is None:
                raise p.fail(f"{what} (listed in {LUT_KEY_TENSORS!r}) is not in the tensor table")
            kind, group, sb, off, k, rows = (int(v) for v in layouts[6 * i:6 * i + 6])
            lay = LutLayout(kind, group, sb, off)
            bad = lay.check(rows, k)
            if bad:
                raise p.fail(f"{what} has an invalid LUT layout for {rows} x {k}: {bad}")
            if t.ggml_type != _I8:
                raise p.fail(f"{what} is stored as {t.type_name}, but packed LUT data must be I8 bytes")
            want = lay.stored_shape(rows, k)
            if tuple(t.shape) != want:
                raise p.fail(f"{what}: stored shape {tuple(t.shape)} does not match its layout "
                             f"{lay.label} of {rows} x {k} (expected {want}: row-block bytes, "
                             f"row blocks)")
            self.tensors[name] = TensorInfo(name, t.ggml_type, "LUT_" + lay.label.upper(), (k, rows),
                                            t.offset, t.nbytes, lay, t.shape)

    def _parse_kv(self, p: _Parser, i: int) -> None:
        start = p.pos
        key = p.string(f"key of metadata pair {i}", strict=True)
        if not key:
            raise p.fail(f"metadata pair {i} at offset {start} has an empty key")
        if len(key.encode("utf-8")) > MAX_KEY_LEN:
            raise p.fail(f"metadata key at offset {start} is longer than {MAX_KEY_LEN} bytes")
        if key in self.metadata:
            raise p.fail(f"duplicate metadata key {key!r} at offset {start}")
        vt_raw = p.u32(f"value type of metadata {key!r}")
        try:
            vt = _VT(vt_raw)
        except ValueError:
            raise p.fail(f"metadata {key!r} at offset {start} has unknown value type "
                         f"{vt_raw}") from None
        what = f"metadata {key!r}"
        item_vt = None
        if vt == _VT.ARRAY:
            item_raw = p.u32(f"item type of {what}")
            try:
                item_vt = _VT(item_raw)
            except ValueError:
                raise p.fail(f"{what} at offset {start} is an array of unknown value type "
                             f"{item_raw}") from None
            if item_vt == _VT.ARRAY:
                raise p.fail(f"{what} at offset {start} is an array of arrays (nested arrays "
                             f"are not supported)")
            n = p.u64(f"length of {what}")
            left = p.size - p.pos
            min_item = 8 if item_vt == _VT.STRING else _FIXED[item_vt][1]
            if n > left // min_item:
                raise p.fail(f"{what} at offset {start} claims {n} {item_vt.name} items, which "
                             f"need at least {n * min_item} bytes but only {left} remain "
                             f"(file size {p.size})")
            if item_vt == _VT.STRING:
                value: Any = p.string_array(n, what)
            else:
                _, size, dt = _FIXED[item_vt]
                arr = np.frombuffer(p.mv, dtype=dt, count=n, offset=p.pos)
                p.pos += n * size
                if item_vt == _VT.BOOL:
                    if n and int(arr.max()) > 1:
                        bad = int(np.flatnonzero(arr > 1)[0])
                        raise p.fail(f"{what}: item {bad} is {int(arr[bad])}, not a valid bool "
                                     f"(0 or 1)")
                    arr = arr.astype(np.bool_)
                else:
                    arr = arr.astype(dt.newbyteorder("="), copy=True)
                arr.flags.writeable = False
                value = arr
        elif vt == _VT.STRING:
            value = p.string(what, strict=False)
        else:
            fmt, size, _ = _FIXED[vt]
            p.need(size, f"value of {what}")
            (value,) = struct.unpack_from(fmt, p.mv, p.pos)
            p.pos += size
            if vt == _VT.BOOL:
                if value > 1:
                    raise p.fail(f"{what} = {value} is not a valid bool (0 or 1)")
                value = bool(value)
        self.metadata[key] = value
        self.metadata_types[key] = (vt, item_vt)

    def _parse_tensor_info(self, p: _Parser, i: int) -> tuple[str, int, tuple[int, ...], int, int]:
        start = p.pos
        name = p.string(f"name of tensor {i}", strict=True)
        if not name:
            raise p.fail(f"tensor {i} at offset {start} has an empty name")
        if len(name.encode("utf-8")) > MAX_TENSOR_NAME:
            raise p.fail(f"tensor {i} name {name!r} is longer than {MAX_TENSOR_NAME} bytes")
        what = f"tensor {name!r}"
        n_dims = p.u32(f"n_dims of {what}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise p.fail(f"{what} has n_dims {n_dims} (must be 1..{MAX_DIMS})")
        shape = []
        n_elements = 1
        for d in range(n_dims):
            ne = p.u64(f"dim {d} of {what}")
            if ne == 0:
                raise p.fail(f"{what} has dim {d} = 0 (every dim must be > 0)")
            n_elements *= ne
            if n_elements > _I64_MAX:
                raise p.fail(f"{what} shape {tuple(shape + [ne])} overflows: element count "
                             f"exceeds 2**63 - 1")
            shape.append(ne)
        ggml_type = p.u32(f"type of {what}")
        if ggml_type not in _KNOWN_TYPES:
            raise p.fail(f"{what} has unknown ggml type id {ggml_type}")
        rel_offset = p.u64(f"data offset of {what}")
        type_name, block, type_size = _KNOWN_TYPES[ggml_type]
        if shape[0] % block:
            raise p.fail(f"{what} of type {type_name} has ne0 = {shape[0]}, not a multiple of "
                         f"its block size {block}")
        nbytes = n_elements // block * type_size
        return name, ggml_type, tuple(shape), rel_offset, nbytes

    def _place_tensors(self, p: _Parser, infos: list) -> None:
        for name, ggml_type, shape, rel_offset, nbytes in infos:
            what = f"tensor {name!r}"
            if name in self.tensors:
                raise p.fail(f"duplicate tensor name {name!r}")
            if rel_offset % self.alignment:
                raise p.fail(f"{what} data offset {rel_offset} (relative to the data section) "
                             f"is not a multiple of the alignment {self.alignment}")
            offset = self.data_offset + rel_offset
            if offset + nbytes > self.file_size:
                raise p.fail(f"{what} data [offset {offset}, {nbytes} bytes] extends past end "
                             f"of file (size {self.file_size})")
            self.tensors[name] = TensorInfo(name, ggml_type, _KNOWN_TYPES[ggml_type][0],
                                            shape, offset, nbytes)
        by_offset = sorted(self.tensors.values(), key=lambda t: t.offset)
        for a, b in zip(by_offset, by_offset[1:]):
            if b.offset < a.offset + a.nbytes:
                raise p.fail(f"tensor {b.name!r} data [offset {b.offset}, {b.nbytes} bytes] "
                             f"overlaps tensor {a.name!r} data [offset {a.offset}, "
                             f"{a.nbytes} bytes]")

    # ---------------------------------------------------------------- access
    @property
    def mapping(self) -> np.memmap:
        """The whole file as one read-only uint8 memmap (tensor views point into it)."""
        return self._mm

    @property
    def architecture(self) -> str | None:
        a = self.metadata.get("general.architecture")
        return a if isinstance(a, str) else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def require(self, key: str, kind: type | tuple[type, ...] | None = None) -> Any:
        """Metadata value for `key`; GGUFError naming the key if absent or not of `kind`."""
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: required metadata key {key!r} is missing")
        v = self.metadata[key]
        if kind is not None:
            kinds = kind if isinstance(kind, tuple) else (kind,)
            # bool is an int subclass; only accept it where bool was asked for
            if not isinstance(v, kinds) or (isinstance(v, bool) and bool not in kinds):
                want = " or ".join(k.__name__ for k in kinds)
                raise GGUFError(f"{self.path}: metadata {key!r} should be {want}, got "
                                f"{type(v).__name__} ({_short(v)})")
        return v

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named {name!r} "
                            f"({len(self.tensors)} tensors in file)") from None

    def tensor_data(self, name: str) -> np.ndarray:
        """Read-only zero-copy view of a tensor's bytes in the file mapping.

        F32/F16/F64/I8..I64 tensors come back with their dtype in numpy (row-major) shape
        (`TensorInfo.numpy_shape`); every other type (quantized blocks, BF16, packed LUT
        tensors) as a 1-D uint8 array of `nbytes`.
        """
        t = self.tensor(name)
        raw = self._mm[t.offset:t.offset + t.nbytes]
        dt = None if t.lut is not None else _TYPED_VIEWS.get(t.ggml_type)
        view = raw.view(np.ndarray) if dt is None else \
            raw.view(dt).reshape(t.numpy_shape).view(np.ndarray)
        view.flags.writeable = False
        return view

    @property
    def lut_method(self) -> str | None:
        """How the packed LUT tensors were quantized (None if the file has none)."""
        if not any(t.lut for t in self.tensors.values()):
            return None
        m = self.metadata.get(LUT_KEY_METHOD)
        return m if isinstance(m, str) else "unknown"

    def runtime_descs(self) -> list[tuple]:
        """Tensor descriptions for _core.Model: (name, type, shape, offset, nbytes[, lut format]);
        packed LUT tensors carry their logical shape and their (kind, group, scale_bytes,
        has_offset)."""
        return [(t.name, t.ggml_type, list(t.shape), t.offset, t.nbytes) if t.lut is None else
                (t.name, t.ggml_type, list(t.shape), t.offset, t.nbytes, t.lut.fmt)
                for t in self.tensors.values()]

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}, v{self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors)")


# -------------------------------------------------------------------- describe
def _short(v: Any, width: int = 70, items: int = 4) -> str:
    """One-line rendering of a metadata value with long strings and arrays truncated."""
    if isinstance(v, str):
        r = repr(v)
        return r if len(r) <= width else r[:width - 3] + "..."
    if isinstance(v, list):
        head = ", ".join(_short(x, 24) for x in v[:items])
        more = ", ..." if len(v) > items else ""
        return f"[{len(v)} str] [{head}{more}]"
    if isinstance(v, np.ndarray):
        head = ", ".join(repr(x.item()) for x in v[:items])
        more = ", ..." if v.size > items else ""
        return f"[{v.size} {v.dtype}] [{head}{more}]"
    if isinstance(v, float):
        return f"{v:.7g}"
    return repr(v)


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _human_count(n: int) -> str:
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def describe(g: GGUFFile) -> str:
    """Human-readable summary for `lutllm info`: file, format, parameters, tensor types,
    then every metadata key with long strings and arrays truncated."""
    n_params = sum(t.n_elements for t in g.tensors.values())
    data_bytes = sum(t.nbytes for t in g.tensors.values())
    hist: dict[str, list[int]] = {}
    for t in g.tensors.values():
        h = hist.setdefault(t.type_name, [0, 0, 0])
        h[0] += 1
        h[1] += t.n_elements
        h[2] += t.nbytes
    lines = [
        f"file:          {g.path}",
        f"size:          {_human_bytes(g.file_size)} ({g.file_size} bytes)",
        f"format:        GGUF v{g.version}, alignment {g.alignment}, "
        f"{len(g.metadata)} metadata keys, {len(g.tensors)} tensors",
        f"architecture:  {g.architecture or '(none)'}",
    ]
    name = g.metadata.get("general.name")
    if isinstance(name, str):
        lines.append(f"name:          {name}")
    bpw = f", {8 * data_bytes / n_params:.2f} bits/weight" if n_params else ""
    lines.append(f"parameters:    {_human_count(n_params)} ({n_params}){bpw}")
    packed = [t for t in g.tensors.values() if t.lut is not None]
    if packed:
        pe = sum(t.n_elements for t in packed)
        pb = sum(t.nbytes for t in packed)
        labels = ", ".join(sorted({t.lut.label for t in packed}))
        lines.append(f"quantization:  lutllm LUT v{g.metadata.get(LUT_KEY_VERSION)} ({labels}, method "
                     f"{g.lut_method}): {len(packed)} packed tensors, {_human_count(pe)} weights, "
                     f"{8 * pb / pe:.2f} bits/weight")
    lines.append("tensor types:")
    for tn, (count, elems, nb) in sorted(hist.items(), key=lambda kv: -kv[1][2]):
        lines.append(f"  {tn:<8} {count:>5} tensors  {_human_count(elems):>8} params  "
                     f"{_human_bytes(nb):>10}")
    lines.append("metadata:")
    width = max((len(k) for k in g.metadata), default=0)
    for k, v in g.metadata.items():
        lines.append(f"  {k:<{width}} = {_short(v)}")
    return "\n".join(lines)
