"""`lutllm convert IN.gguf OUT --flash`: rewrite a GGUF into the flash layout, where the FFN weights
are stored as 4096-aligned neuron bundles that the runtime streams from storage (runtime/flash_ffn.h).
This module writes and describes that layout; it does not run models.

The flash file is itself a GGUF (readable by the `gguf` package) with general.alignment = 4096:

* every tensor of the source except ffn_gate/ffn_up/ffn_down, unchanged (same type, same bytes),
  first, in source order: the resident part (embeddings, attention, norms, output head);
* one I8 tensor per layer, `blk.N.ffn_bundles`, holding that layer's FFN as bundles. Bundle j covers
  neurons [j*Gn, min((j+1)*Gn, d_ff)) (n_j of them) and is, at byte offset j * bundle_stride[N]:

      [gate rows n0..n0+n_j | up rows n0..n0+n_j | down columns n0..n0+n_j | zero padding]

  all in the LUT layout of native/include/lutllm/lut.h. The gate (and up) part is rows n0..n0+n_j of
  the packed (d_ff x d_model) matrix: n_j/16 whole row blocks, byte-identical to that slice of the
  matrix the resident runtime repacks. The down part is the K-slice down[:, n0:n0+n_j] packed as a
  (d_model x n_j) LUT matrix: for each of the d_model/16 row blocks, the n_j/G group blocks of that
  K range. Because LUT groups run along K, the down parts of any set of bundles, concatenated per row
  block in neuron order, form a valid LUT matrix with K = sum n_j -- the down product over just those
  neurons -- and over all bundles it is the resident packed down matrix byte for byte.

  Gn is a multiple of 16 (row blocks) and of the down group G, chosen so every bundle is >= 32 KiB
  with the least padding (or set with bundle_neurons). bundle_stride is the largest bundle rounded up
  to 4096, so every bundle starts 4096-aligned and a whole layer is one contiguous aligned range.

Metadata (lutllm.flash.*): version (1), bundle_neurons (Gn), gu_format and down_format (int32,
4 per layer: kind, group, scale_bytes, has_offset, as LutFormat), bundle_stride (uint64 per layer),
requantized (names of source tensors that were re-quantized; absent when none), source (file name),
and, when the neurons are reordered, unit_neurons (U) and unit_order (int32, d_ff/U per layer).

Neuron order (convert_flash(order_text=...)): neurons move in units of U (a multiple of 16 and of
every down group, so a unit is whole gate/up row blocks and whole down K groups; U divides Gn).
File unit u of layer N holds the source neurons [unit_order[N][u]*U, +U): gate/up row blocks and down
K-group blocks are moved as bytes, nothing is re-quantized. Units are sorted by how often they are
active on a calibration text (most often first), so the hot neurons share the first bundles (the ones
dense mode keeps resident, and the ones windowed mode finds active) and the last bundles are cold.
The runtime puts every unit back at its original K position in the down product, so a reordered
file gives exactly the logits of the source order.

Gate predictor (convert_flash(predictor_rank=R), R > 0): per layer two Q8_0 tensors
`blk.N.ffn_pred_a.weight` (d_ff x R, rows in the file's neuron order) and `blk.N.ffn_pred_b.weight`
(R x d_model) with A @ B ~= the dequantized gate matrix Wg, and lutllm.flash.predictor_rank = R.
Windowed mode scores bundles with A (B x) instead of keeping the gate rows resident. The factors are
the truncated SVD of Wg, split as U sqrt(S), sqrt(S) V^T. (An activation-aware SVD, of Wg C^(1/2)
with C = E[x x^T] of the FFN inputs on a calibration text, predictor_factors(x=...), found fewer of
the truly active bundles on a held-out text in `bench/flash.py --recall`; it is not used.) The gate
is taken from the source (for a re-quantized gate, before re-quantization). Q8_0 factors find the
same bundles as float32 ones to within 0.1 % (same benchmark).

Weight types: Q4_0, Q4_1, Q4_K, Q3_K, Q2_K, TQ1_0 and TQ2_0 repack exactly (lut_repack_ggml). Gate and
up of the k-quant types keep their compact form with super-block d/dmin and small integer sub-scales
(Q4_K: 4.625 bits/weight, the bytes the resident runtime builds) when d_model is a multiple of 256;
their down K-slices (16..128 weights wide, narrower than a 256-weight super-block) take the uniform
fp32-scale form (Q4_K: 6 bits/weight), which decodes to the same weights. Every other type (Q5_0, Q6_K, Q8_0, F16, ...) has no exact LUT
form, so it is dequantized and re-quantized to 4 bits, group 32, fp16 scale + offset (round to
nearest, lut_quantize). That is lossy: such a flash file is a different (smaller) model than its
source, and the tensors are listed in lutllm.flash.requantized and reported by convert(). Streamed and
resident runs of the *same flash file* are still bit-identical.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .gguf_file import GGUFFile, TensorInfo

__all__ = ["FlashLayout", "ConvertError", "convert_flash", "lut_group_block_bytes", "ALIGN", "MIN_BUNDLE_BYTES",
           "predictor_factors", "predictor_recall", "default_predictor_rank"]

FLASH_VERSION = 1
ALIGN = 4096
MIN_BUNDLE_BYTES = 32 * 1024
REQUANT_FORMAT = (4, 32, 2, 1)  # W4, group 32, fp16 scale + offset (lut_quantize's format)
_FFN = ("ffn_gate", "ffn_up", "ffn_down")
_KEY = "lutllm.flash."


class ConvertError(ValueError):
    """The input cannot be converted; the message names the file and tensor at fault."""


# ---- LUT layout arithmetic (mirrors native/include/lutllm/lut.h) ---------------------------------
def lut_group_block_bytes(fmt: tuple[int, int, int, int]) -> int:
    kind, group, scale_bytes, has_offset = fmt
    planes = 2 if kind == 5 else kind
    return 2 * group * planes + 16 * scale_bytes * (1 + has_offset)


def _row_block_bytes(fmt, k: int) -> int:
    from . import _core

    return int(_core.lut_packed_bytes(tuple(fmt), 16, k))


@dataclass(frozen=True)
class FlashLayout:
    """Where each layer's bundles live and how they are packed (see the module docstring)."""

    n_layer: int
    d_model: int
    d_ff: int
    bundle_neurons: int
    gu_format: tuple[tuple[int, int, int, int], ...]
    down_format: tuple[tuple[int, int, int, int], ...]
    bundle_stride: tuple[int, ...]
    requantized: tuple[str, ...] = ()
    layer_offset: tuple[int, ...] = field(default=())  # absolute file offsets (known once written)
    unit_neurons: int = 0                               # neuron order unit (0: source order)
    unit_order: tuple[tuple[int, ...], ...] = ()        # per layer: original unit of each file unit
    predictor_rank: int = 0                             # gate predictor rank (0: none)
    predictor_bytes: int = 0                            # bytes of all predictor tensors

    @property
    def n_bundles(self) -> int:
        return -(-self.d_ff // self.bundle_neurons)

    def bundle_size(self, j: int) -> int:
        """Neurons in bundle j."""
        return min(self.bundle_neurons, self.d_ff - j * self.bundle_neurons)

    def gate_bytes(self, layer: int, n: int) -> int:
        return n // 16 * _row_block_bytes(self.gu_format[layer], self.d_model)

    def down_bytes(self, layer: int, n: int) -> int:
        f = self.down_format[layer]
        return self.d_model // 16 * (n // f[1]) * lut_group_block_bytes(f)

    def bundle_bytes(self, layer: int, n: int) -> int:
        return 2 * self.gate_bytes(layer, n) + self.down_bytes(layer, n)

    def layer_bytes(self, layer: int) -> int:
        return self.n_bundles * self.bundle_stride[layer]

    def ffn_bytes(self) -> int:
        return sum(self.layer_bytes(i) for i in range(self.n_layer))

    def config(self) -> dict[str, Any]:
        """The dict the C++ FlashFfn takes (python/csrc/module.cc)."""
        out = {
            "bundle_neurons": self.bundle_neurons,
            "gu_format": [list(f) for f in self.gu_format],
            "down_format": [list(f) for f in self.down_format],
            "bundle_stride": list(self.bundle_stride),
            "layer_offset": list(self.layer_offset),
        }
        if self.unit_order:
            out.update(unit_neurons=self.unit_neurons, unit_order=[list(o) for o in self.unit_order])
        if self.predictor_rank:
            out["predictor_rank"] = self.predictor_rank
        return out

    @staticmethod
    def from_gguf(g: GGUFFile) -> "FlashLayout | None":
        """The layout of a flash file, or None for an ordinary GGUF. Raises ConvertError when the
        flash metadata is inconsistent."""
        md = g.metadata
        if _KEY + "version" not in md:
            return None
        where = f"{g.path}: flash layout"
        if int(md[_KEY + "version"]) != FLASH_VERSION:
            raise ConvertError(f"{where}: version {md[_KEY + 'version']} is not supported (expected {FLASH_VERSION}); "
                               f"convert the model again")
        arch = md.get("general.architecture")
        try:
            n_layer = int(md[f"{arch}.block_count"])
            d_model = int(md[f"{arch}.embedding_length"])
            d_ff = int(md[f"{arch}.feed_forward_length"])
            gn = int(md[_KEY + "bundle_neurons"])
            guf = np.asarray(md[_KEY + "gu_format"], dtype=np.int64).reshape(-1, 4)
            dnf = np.asarray(md[_KEY + "down_format"], dtype=np.int64).reshape(-1, 4)
            stride = [int(x) for x in md[_KEY + "bundle_stride"]]
        except (KeyError, ValueError, TypeError) as e:
            raise ConvertError(f"{where}: missing or malformed key ({e})") from None
        if len(guf) != n_layer or len(dnf) != n_layer or len(stride) != n_layer:
            raise ConvertError(f"{where}: per-layer arrays do not have {n_layer} entries")
        offs = []
        lay = FlashLayout(n_layer, d_model, d_ff, gn, tuple(tuple(int(v) for v in r) for r in guf),
                          tuple(tuple(int(v) for v in r) for r in dnf), tuple(stride),
                          tuple(md.get(_KEY + "requantized", ()) or ()))
        for i in range(n_layer):
            name = f"blk.{i}.ffn_bundles"
            t = g.tensors.get(name)
            if t is None:
                raise ConvertError(f"{where}: tensor '{name}' is missing")
            if t.nbytes != lay.layer_bytes(i) or t.offset % ALIGN:
                raise ConvertError(f"{where}: tensor '{name}' has {t.nbytes} bytes at offset {t.offset}, expected "
                                   f"{lay.layer_bytes(i)} bytes at a multiple of {ALIGN}")
            if stride[i] % ALIGN or stride[i] < lay.bundle_bytes(i, gn):
                raise ConvertError(f"{where}: layer {i} bundle stride {stride[i]} is too small or unaligned")
            offs.append(t.offset)
        unit, order = 0, ()
        if _KEY + "unit_order" in md:
            try:
                unit = int(md[_KEY + "unit_neurons"])
                flat = np.asarray(md[_KEY + "unit_order"], dtype=np.int64)
            except (KeyError, ValueError, TypeError) as e:
                raise ConvertError(f"{where}: missing or malformed neuron order ({e})") from None
            n_units = d_ff // unit if unit > 0 and d_ff % unit == 0 and gn % unit == 0 else -1
            if n_units < 0 or flat.size != n_layer * n_units or any(
                    not np.array_equal(np.sort(r), np.arange(n_units)) for r in flat.reshape(n_layer, -1)):
                raise ConvertError(f"{where}: the neuron order is not a permutation of units of {unit} neurons "
                                   f"per layer")
            order = tuple(tuple(int(v) for v in r) for r in flat.reshape(n_layer, -1))
        rank, pbytes = int(md.get(_KEY + "predictor_rank", 0) or 0), 0
        if rank:
            q8 = int(__import__("gguf").GGMLQuantizationType.Q8_0)
            for i in range(n_layer):
                for nm, shape in (("a", (rank, d_ff)), ("b", (d_model, rank))):
                    t = g.tensors.get(f"blk.{i}.ffn_pred_{nm}.weight")
                    if t is None or tuple(t.shape) != shape or t.ggml_type != q8:
                        raise ConvertError(f"{where}: predictor tensor 'blk.{i}.ffn_pred_{nm}.weight' is missing or "
                                           f"not Q8_0 of shape {list(shape)}")
                    pbytes += t.nbytes
        return FlashLayout(lay.n_layer, lay.d_model, lay.d_ff, lay.bundle_neurons, lay.gu_format, lay.down_format,
                           lay.bundle_stride, lay.requantized, tuple(offs), unit, order, rank, pbytes)


# ---- planning ----------------------------------------------------------------------------------
def _lut_format(ggml_type: int, kq: bool):
    """The exact LUT format of a GGUF type, or None. kq: k-quant types keep their compact two-level
    scales (gate/up: bundles are whole row blocks); without it they get the uniform fp32-scale form
    (down: bundles are K-slices of 16..128-weight groups, narrower than a 256-weight super-block)."""
    from . import _core

    try:
        return tuple(_core.lut_format_for_ggml(ggml_type, _core.LUT_TERNARY_REPACK_GROUP, kq=kq))
    except ValueError:
        return None


def _choose_bundle_neurons(d_model, d_ff, gu_fmts, dn_fmts, unit, forced=None) -> int:
    def total(gn):
        lay = FlashLayout(len(gu_fmts), d_model, d_ff, gn, gu_fmts, dn_fmts, (0,) * len(gu_fmts))
        smallest = min(lay.bundle_bytes(i, gn) for i in range(lay.n_layer))
        size = sum(lay.n_bundles * -(-lay.bundle_bytes(i, gn) // ALIGN) * ALIGN for i in range(lay.n_layer))
        return smallest, size

    if forced is not None:
        if forced <= 0 or forced % unit:
            raise ConvertError(f"bundle_neurons must be a positive multiple of {unit} for this model, got {forced}")
        return min(forced, -(-d_ff // unit) * unit)
    cands = list(range(unit, -(-d_ff // unit) * unit + 1, unit))
    big = [g for g in cands if total(g)[0] >= MIN_BUNDLE_BYTES] or [cands[-1]]
    first = big[0]
    # least total bytes (padding) among sizes up to 2x the smallest that reaches 32 KiB
    return min((g for g in big if g <= 2 * first), key=lambda g: (total(g)[1], g))


@dataclass
class _LayerSrc:
    gate: TensorInfo
    up: TensorInfo
    down: TensorInfo
    gu_fmt: tuple
    dn_fmt: tuple
    requant: set  # which of "gate", "up", "down" are re-quantized


def _plan_layers(g: GGUFFile, n_layer: int, d_model: int, d_ff: int) -> list[_LayerSrc]:
    out = []
    for i in range(n_layer):
        ts = []
        for nm in _FFN:
            name = f"blk.{i}.{nm}.weight"
            t = g.tensors.get(name)
            if t is None:
                raise ConvertError(f"{g.path}: tensor '{name}' is missing (a flash conversion needs a gated FFN)")
            want = (d_model, d_ff) if nm != "ffn_down" else (d_ff, d_model)
            if tuple(t.shape) != want:
                raise ConvertError(f"{g.path}: tensor '{name}' has shape {list(t.shape)}, expected {list(want)}")
            if t.lut is not None:  # bundles are cut from GGUF blocks or floats, not from packed bytes
                raise ConvertError(f"{g.path}: tensor '{name}' is already packed ({t.lut.label}, `lutllm quantize` "
                                   f"output); convert the source GGUF instead")
            ts.append(t)
        # gate/up keep k-quant sub-scales where K = d_model allows them (a multiple of 256)
        kq_rows = d_model % 256 == 0
        fmts = [_lut_format(t.ggml_type, kq=kq_rows and nm != "ffn_down") for nm, t in zip(_FFN, ts)]
        requant = {nm for nm, f in zip(("gate", "up", "down"), fmts) if f is None}
        fmts = [f or REQUANT_FORMAT for f in fmts]
        if fmts[0] != fmts[1]:  # gate and up run as one matrix: they must share a format
            requant |= {"gate", "up"}
            fmts[0] = fmts[1] = REQUANT_FORMAT
        if d_model % fmts[0][1]:
            raise ConvertError(f"{g.path}: layer {i}: d_model {d_model} is not a multiple of the LUT group {fmts[0][1]}")
        out.append(_LayerSrc(ts[0], ts[1], ts[2], fmts[0], fmts[2], requant))
    return out


# ---- packing -------------------------------------------------------------------------------------
def _pack(g: GGUFFile, t: TensorInfo, requant: bool, fmt_want: tuple):
    """(packed bytes, fmt) of one source matrix in the LUT layout (fmt_want: the planned format, which
    says whether k-quant sub-scales are kept)."""
    from . import _core

    rows, k = t.shape[1], t.shape[0]
    raw = np.ascontiguousarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1)
    if not requant:
        kq = fmt_want[2] in (1, 3)  # kLutScaleKQ / kLutScaleKQ4 (lut.h)
        packed, fmt = _core.lut_repack_ggml(t.ggml_type, raw, rows, k, _core.LUT_TERNARY_REPACK_GROUP, kq=kq)
        return packed, tuple(fmt)
    import gguf

    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t.ggml_type)).reshape(rows, k).astype(np.float32)
    packed, fmt = _core.lut_quantize(np.ascontiguousarray(w), REQUANT_FORMAT[0], REQUANT_FORMAT[1])
    return packed, tuple(fmt)


def layer_bundles(g: GGUFFile, lay: FlashLayout, src: _LayerSrc, layer: int) -> np.ndarray:
    """The bytes of blk.<layer>.ffn_bundles (n_bundles * stride)."""
    d, dff, gn = lay.d_model, lay.d_ff, lay.bundle_neurons
    gate, f1 = _pack(g, src.gate, "gate" in src.requant, src.gu_fmt)
    up, f2 = _pack(g, src.up, "up" in src.requant, src.gu_fmt)
    down, f3 = _pack(g, src.down, "down" in src.requant, src.dn_fmt)
    if f1 != lay.gu_format[layer] or f2 != lay.gu_format[layer] or f3 != lay.down_format[layer]:
        raise ConvertError(f"{g.path}: layer {layer}: packed formats {f1} {f2} {f3} differ from the plan")
    rb = _row_block_bytes(f1, d)
    gate = gate.reshape(dff // 16, rb)
    up = up.reshape(dff // 16, rb)
    gd, gbb = f3[1], lut_group_block_bytes(f3)
    down = down.reshape(d // 16, dff // gd, gbb)
    if lay.unit_order:  # move whole units: U/16 gate/up row blocks, U/G down group blocks
        u, order = lay.unit_neurons, np.asarray(lay.unit_order[layer])
        gate = gate.reshape(dff // u, -1)[order].reshape(dff // 16, rb)
        up = up.reshape(dff // u, -1)[order].reshape(dff // 16, rb)
        down = down.reshape(d // 16, dff // u, u // gd, gbb)[:, order].reshape(d // 16, dff // gd, gbb)
    stride = lay.bundle_stride[layer]
    out = np.zeros(lay.n_bundles * stride, dtype=np.uint8)
    for j in range(lay.n_bundles):
        n0, n = j * gn, lay.bundle_size(j)
        b = out[j * stride : j * stride + lay.bundle_bytes(layer, n)]
        gb = lay.gate_bytes(layer, n)
        b[:gb] = gate[n0 // 16 : (n0 + n) // 16].reshape(-1)
        b[gb : 2 * gb] = up[n0 // 16 : (n0 + n) // 16].reshape(-1)
        b[2 * gb :] = down[:, n0 // gd : (n0 + n) // gd, :].reshape(-1)
    return out


# ---- GGUF writing (streamed, so the whole model never sits in memory) ----------------------------
def _pack_value(vt: int, val: Any, item_vt: int | None) -> bytes:
    import gguf

    VT = gguf.GGUFValueType
    fixed = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
             VT.FLOAT32: "<f", VT.BOOL: "<B", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}
    if vt == VT.STRING:
        b = val.encode("utf-8", "surrogateescape") if isinstance(val, str) else bytes(val)
        return struct.pack("<Q", len(b)) + b
    if vt == VT.ARRAY:
        head = struct.pack("<IQ", int(item_vt), len(val))
        if item_vt == VT.STRING:
            return head + b"".join(_pack_value(VT.STRING, s, None) for s in val)
        dt = np.dtype(fixed[item_vt])
        return head + np.asarray(val).astype(dt.newbyteorder("<")).tobytes()
    return struct.pack(fixed[vt], int(val) if vt == VT.BOOL else val)


def _kv(key: str, vt: int, val: Any, item_vt: int | None = None) -> bytes:
    k = key.encode("utf-8")
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", int(vt)) + _pack_value(vt, val, item_vt)


def _pad(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def convert_flash(
    src_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    bundle_neurons: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    order_text: str | None = None,
    order_density: float = 0.5,
    predictor_rank: int | None = None,
) -> FlashLayout:
    """Write the flash layout of `src_path` to `out_path` atomically (temporary file + rename).
    Returns the layout written (with layer offsets). With `order_text`, neurons are reordered by how
    often they are active on that text (see neuron_order; calibrate windowed thresholds on the same
    text, evaluate on another). predictor_rank: rank of the gate predictor (None: default_predictor_rank(d_model); 0: none)."""
    import gguf

    from .progress import Progress

    src_path, out_path = Path(src_path), Path(out_path)
    g = GGUFFile(src_path)
    if out_path.exists() and out_path.resolve() == src_path.resolve():
        raise ConvertError(f"{out_path}: output would overwrite the input")
    if FlashLayout.from_gguf(g) is not None:
        raise ConvertError(f"{src_path}: is already a flash file")
    arch = g.architecture
    try:
        n_layer = int(g.require(f"{arch}.block_count"))
        d_model = int(g.require(f"{arch}.embedding_length"))
        d_ff = int(g.require(f"{arch}.feed_forward_length"))
    except (KeyError, ValueError) as e:
        raise ConvertError(str(e)) from None
    if d_model % 16 or d_ff % 16:
        raise ConvertError(f"{src_path}: d_model {d_model} and d_ff {d_ff} must be multiples of 16 for the LUT layout")
    srcs = _plan_layers(g, n_layer, d_model, d_ff)
    gu_fmts = tuple(s.gu_fmt for s in srcs)
    dn_fmts = tuple(s.dn_fmt for s in srcs)
    unit = max(16, max(f[1] for f in dn_fmts))
    if d_ff % unit:
        raise ConvertError(f"{src_path}: d_ff {d_ff} is not a multiple of {unit} (row block and LUT group)")
    gn = _choose_bundle_neurons(d_model, d_ff, gu_fmts, dn_fmts, unit, bundle_neurons)
    probe = FlashLayout(n_layer, d_model, d_ff, gn, gu_fmts, dn_fmts, (0,) * n_layer)
    stride = tuple(_pad(probe.bundle_bytes(i, gn)) for i in range(n_layer))
    requant = tuple(f"blk.{i}.{nm}.weight" for i, s in enumerate(srcs) for nm in _FFN if nm[4:] in s.requant)
    rank = default_predictor_rank(d_model) if predictor_rank is None else int(predictor_rank)
    if rank and (rank < 0 or rank % 32 or rank > min(d_model, d_ff)):
        raise ConvertError(f"predictor rank must be 0 or a positive multiple of 32 up to {min(d_model, d_ff)}, "
                           f"got {rank}")
    unit_order: tuple = ()
    if order_text is not None:
        unit_order = neuron_order(src_path, out_path, order_text, unit, order_density, log)
    lay = FlashLayout(n_layer, d_model, d_ff, gn, gu_fmts, dn_fmts, stride, requant, (),
                      unit if unit_order else 0, unit_order, rank)
    if requant and log:
        log(f"note: {len(requant)} FFN tensors have no exact 4-bit table-lookup form "
            f"({', '.join(sorted({g.tensors[n].type_name for n in requant}))}) and are re-quantized to 4 bits "
            f"(group 32): the flash model differs slightly from the source")

    # tensors: resident ones as in the source, then the bundles of each layer
    ffn_names = {f"blk.{i}.{nm}.weight" for i in range(n_layer) for nm in _FFN}
    resident = [t for t in g.tensors.values() if t.name not in ffn_names]
    VT = gguf.GGUFValueType
    kvs = []
    for key, val in g.metadata.items():
        if key == "general.alignment" or key.startswith(_KEY):
            continue
        vt, item_vt = g.metadata_types[key]
        kvs.append(_kv(key, vt, val, item_vt))
    kvs.append(_kv("general.alignment", VT.UINT32, ALIGN))
    kvs.append(_kv(_KEY + "version", VT.UINT32, FLASH_VERSION))
    kvs.append(_kv(_KEY + "bundle_neurons", VT.UINT32, gn))
    kvs.append(_kv(_KEY + "gu_format", VT.ARRAY, [v for f in gu_fmts for v in f], VT.INT32))
    kvs.append(_kv(_KEY + "down_format", VT.ARRAY, [v for f in dn_fmts for v in f], VT.INT32))
    kvs.append(_kv(_KEY + "bundle_stride", VT.ARRAY, list(stride), VT.UINT64))
    kvs.append(_kv(_KEY + "source", VT.STRING, src_path.name))
    if requant:
        kvs.append(_kv(_KEY + "requantized", VT.ARRAY, list(requant), VT.STRING))
    if unit_order:
        kvs.append(_kv(_KEY + "unit_neurons", VT.UINT32, unit))
        kvs.append(_kv(_KEY + "unit_order", VT.ARRAY, [v for o in unit_order for v in o], VT.INT32))
    if rank:
        kvs.append(_kv(_KEY + "predictor_rank", VT.UINT32, rank))

    infos, rel, sizes = [], 0, []
    entries = [(t.name, t.shape, t.ggml_type, t.nbytes) for t in resident]
    entries += [(f"blk.{i}.ffn_bundles", (lay.layer_bytes(i),), int(gguf.GGMLQuantizationType.I8), lay.layer_bytes(i))
                for i in range(n_layer)]
    q8 = gguf.GGMLQuantizationType.Q8_0
    if rank:  # Q8_0: 32 weights in 34 bytes
        entries += [(f"blk.{i}.ffn_pred_{nm}.weight", shape, int(q8), shape[0] * shape[1] // 32 * 34)
                    for i in range(n_layer) for nm, shape in (("a", (rank, d_ff)), ("b", (d_model, rank)))]
    for name, shape, ty, nb in entries:
        nm = name.encode("utf-8")
        infos.append(struct.pack("<Q", len(nm)) + nm + struct.pack("<I", len(shape))
                     + b"".join(struct.pack("<Q", int(s)) for s in shape) + struct.pack("<IQ", int(ty), rel))
        sizes.append(nb)
        rel += _pad(nb)
    header = struct.pack("<4sIQQ", b"GGUF", 3, len(entries), len(kvs)) + b"".join(kvs) + b"".join(infos)
    data_offset = _pad(len(header))

    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    total = rel
    try:
        with open(tmp, "wb") as f, Progress(total=total, desc=f"convert {src_path.name}", enabled=progress) as bar:
            f.write(header)
            f.write(b"\0" * (data_offset - len(header)))
            for t in resident:
                data = np.ascontiguousarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1)
                f.write(data.tobytes())
                f.write(b"\0" * (_pad(t.nbytes) - t.nbytes))
                bar.update(_pad(t.nbytes))
            for i in range(n_layer):
                blob = layer_bundles(g, lay, srcs[i], i)
                f.write(blob.tobytes())
                bar.update(blob.nbytes)
            for i in range(n_layer if rank else 0):
                a, b = predictor_factors(_dequant(g, srcs[i].gate), rank)
                if unit_order:  # rows follow the file's neuron order
                    a = a.reshape(d_ff // unit, unit, rank)[np.asarray(unit_order[i])].reshape(d_ff, rank)
                for m in (a, b):
                    data = gguf.quants.quantize(np.ascontiguousarray(m, dtype=np.float32), q8).reshape(-1)
                    f.write(data.tobytes())
                    f.write(b"\0" * (_pad(data.nbytes) - data.nbytes))
                    bar.update(_pad(data.nbytes))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    written = FlashLayout.from_gguf(GGUFFile(out_path))
    assert written is not None
    return written


def neuron_order(src_path, out_path, text: str, unit: int, density: float = 0.5,
                 log: Callable[[str], None] | None = None, max_tokens: int = 512) -> tuple[tuple[int, ...], ...]:
    """Per layer, the source units (of `unit` neurons) sorted by activation frequency on `text`:
    a unit is active on a token when its score, max |silu(gate)| over its neurons, exceeds the layer's
    (1 - density) quantile of all unit scores on the text (the CATS-style rule windowed mode
    applies per bundle). Ties (equal frequency) go by mean score. Measured by running the model on a
    temporary flash file in the source order with one unit per bundle."""
    from .engine import Engine

    tmp = Path(out_path).with_name(f".{Path(out_path).name}.order-{os.getpid()}")
    try:
        convert_flash(src_path, tmp, bundle_neurons=unit, progress=False, predictor_rank=0)
        e = Engine(str(tmp), n_ctx=max_tokens + 8, n_threads=None, n_batch=64, flash_mode="windowed")
        toks = e.tokenizer.encode(text, add_special=True, parse_special=False)[:max_tokens]
        if len(toks) < 8:
            raise ConvertError(f"the neuron-order text has {len(toks)} tokens; at least 8 are needed")
        from . import _core

        _core.model_flash_record_scores(e._model, True)
        e.eval(list(toks))
        scores = _core.model_flash_take_scores(e._model)
        del e
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    out = []
    for s in scores:
        s = np.asarray(s, dtype=np.float64).reshape(len(toks), -1)
        thr = np.quantile(s, 1.0 - density)
        freq, mean = (s > thr).mean(0), s.mean(0)
        out.append(tuple(int(i) for i in np.lexsort((-mean, -freq))))
    if log:
        log(f"neurons reordered by activation frequency on {len(toks)} tokens (units of {unit})")
    return tuple(out)


# ---- gate predictor ---------------------------------------------------------------------------------
def default_predictor_rank(d_model: int) -> int:
    """The rank convert_flash uses by default: d_model / 12 rounded to a multiple of 32 (at least 32),
    about 5 % of the FFN bytes for the Qwen2.5 models (128 for d_model 1536, 64 for 896). Measured
    (bench/flash.py --recall, Qwen2.5-Coder-1.5B, held-out text): recall at density 0.5 is 0.65 at
    rank 64, 0.68 at 128, 0.72 at 256 -- it grows slowly with the rank, while each step costs slab."""
    return max(32, int(d_model / 12 / 32 + 0.5) * 32)


def _dequant(g: GGUFFile, t: TensorInfo) -> np.ndarray:
    import gguf

    raw = np.ascontiguousarray(g.tensor_data(t.name)).view(np.uint8).reshape(-1)
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType(t.ggml_type))
    return np.asarray(w, dtype=np.float32).reshape(t.shape[1], t.shape[0])


def predictor_factors(w: np.ndarray, rank: int, x: np.ndarray | None = None, ridge: float = 1e-2):
    """(A, B), float32, with A @ B ~= w (rows x cols), A: rows x rank, B: rank x cols. Without `x`:
    the truncated SVD (Eckart-Young optimal in the Frobenius norm). With sample inputs x (n x cols):
    minimises the mean of ||(w - A B) x_t||^2 over the samples instead, via the SVD of w C^(1/2),
    C = x^T x / n + ridge * mean(diag C) * I (the ridge keeps C invertible for few samples).
    The SVD of M (rows x cols) comes from the eigenvectors V of M^T M (float64): A = M V / sqrt(s),
    B = sqrt(s) V^T, the singular values s split evenly between the factors."""
    m = np.asarray(w, dtype=np.float64)
    ihalf = None
    if x is not None:
        x = np.asarray(x, dtype=np.float64)
        c = x.T @ x / len(x)
        c += ridge * np.trace(c) / len(c) * np.eye(len(c))
        e, q = np.linalg.eigh(c)
        e = np.maximum(e, e.max() * 1e-12)
        m = m @ ((q * np.sqrt(e)) @ q.T)
        ihalf = (q / np.sqrt(e)) @ q.T
    ev, v = np.linalg.eigh(m.T @ m)
    ev, v = ev[::-1][:rank], v[:, ::-1][:, :rank]
    s = np.sqrt(np.maximum(ev, 0.0))
    r = np.sqrt(np.maximum(s, s[0] * 1e-12))
    a = (m @ v) / r
    b = r[:, None] * v.T
    if ihalf is not None:
        b = b @ ihalf
    return a.astype(np.float32), b.astype(np.float32)


def predictor_recall(exact, predicted, density: float) -> float:
    """Of the (token, bundle) pairs whose exact score clears the exact (1 - density) quantile, the
    share whose predicted score clears the predicted (1 - density) quantile: how much of the truly
    active set a predictor of equal density finds. exact, predicted: (tokens x bundles) per layer
    (lists of arrays, pooled per layer)."""
    hit = tot = 0
    for e, p in zip(exact, predicted):
        e, p = np.asarray(e, np.float64).ravel(), np.asarray(p, np.float64).ravel()
        te, tp = np.quantile(e, 1 - density), np.quantile(p, 1 - density)
        act = e > te
        hit += int(np.count_nonzero(act & (p > tp)))
        tot += int(np.count_nonzero(act))
    return hit / max(tot, 1)


# ---- what the engine needs to load a flash file ---------------------------------------------------
def flash_shape_view(tensors: dict, lay: FlashLayout) -> dict:
    """The tensor table with shape-only stand-ins for the FFN matrices a flash file stores as bundles,
    so architecture checks written for ordinary GGUFs apply unchanged (nothing reads their data)."""
    import gguf

    out = dict(tensors)
    f32 = int(gguf.GGMLQuantizationType.F32)
    for i in range(lay.n_layer):
        for nm, shape in (("ffn_gate", (lay.d_model, lay.d_ff)), ("ffn_up", (lay.d_model, lay.d_ff)),
                          ("ffn_down", (lay.d_ff, lay.d_model))):
            name = f"blk.{i}.{nm}.weight"
            out.setdefault(name, TensorInfo(name, f32, "F32", shape, 0, 0))
    return out


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes a model needs resident, and the FFN mode a budget allows."""

    mode: str            # "resident" (everything in DRAM), "dense" (FFN streamed per token) or
                         # "windowed" (gate or its predictor resident, active bundles cached in slabs)
    resident: int        # mapped weights that always stay (embeddings, attention, norms, head; the
                         # gate predictor in windowed mode)
    ffn_memory: int      # FFN bytes held: all bundles (resident) or two staging layers + gather buffer
    kv_and_scratch: int  # KV cache and activations
    minimum: int         # the smallest budget that works (dense-stream)
    slab_bundles: int = 0  # windowed: slab capacity per layer, in bundles
    resident_bundles: int = 0  # dense: the first bundles of every layer kept in memory (read once)

    @property
    def total(self) -> int:
        return self.resident + self.ffn_memory + self.kv_and_scratch


def plan_memory(lay: FlashLayout | None, est, mem_budget: int | None, mode: str | None = None) -> MemoryPlan:
    """Choose how to run within `mem_budget` bytes (None: no limit). mode forces "resident" or
    "dense"; est: memory.estimate_memory of the same file and context (LUT copies made at load, KV
    cache, scratch). Weights count as the mapped bytes read every token plus the LUT copies: a
    copy's source pages are read once at load and are then clean page cache the kernel drops under
    pressure (so does an untied token embedding, read a row per token). In dense mode the budget left
    after the resident part, KV cache and staging goes to whole bundles kept in memory: the same
    number per layer, the first ones (the most often active when the file's neurons are ordered);
    only the rest is read every token. Raises ValueError, saying the minimum, when the budget cannot
    hold the resident part. Windowed mode keeps the gate predictor (when the file has one; slab
    slots then hold whole bundles) or else every bundle's gate rows resident (slots: up|down); the
    rest of the budget goes to the slabs. Other modes never touch the predictor."""
    file_size = est.weights_mapped_hot + est.repack
    kv, scratch, n_ctx = est.kv_cache, est.scratch, est.n_ctx
    if lay is None:
        need = file_size + kv + scratch
        if mem_budget is not None and mem_budget < need:
            raise ValueError(f"mem_budget {mem_budget} bytes is below what this model needs fully resident "
                             f"({need} bytes); convert it with `lutllm convert MODEL OUT --flash` to stream its "
                             f"FFN weights from storage")
        if mode not in (None, "auto", "resident"):
            raise ValueError(f"flash mode {mode!r} needs a flash file (`lutllm convert MODEL OUT --flash`)")
        return MemoryPlan("resident", file_size, 0, kv + scratch, need)
    ffn = lay.ffn_bytes()
    down_max = max(lay.d_model // 16 * (lay.d_ff // f[1]) * lut_group_block_bytes(f) for f in lay.down_format)
    resident = file_size - ffn - lay.predictor_bytes  # mapped resident tensors + their LUT copies
    staging = 2 * max(lay.layer_bytes(i) for i in range(lay.n_layer)) + down_max
    minimum = resident + staging + kv + scratch
    full = resident + ffn + kv + scratch  # resident: bundles rearranged in place, down gathered once
    if mode in (None, "auto"):
        mode = "resident" if mem_budget is None or mem_budget >= full else "dense"
    if mode not in ("resident", "dense", "windowed"):
        raise ValueError(f"unknown flash mode {mode!r} (auto, resident, dense, windowed)")
    if mode == "windowed":
        pred = lay.predictor_rank > 0
        gates = 0 if pred else sum(lay.n_bundles * lay.gate_bytes(i, lay.bundle_neurons) for i in range(lay.n_layer))
        slot = [_pad(lay.bundle_bytes(i, lay.bundle_neurons) - (0 if pred else lay.gate_bytes(i, lay.bundle_neurons)))
                for i in range(lay.n_layer)]
        fixed = resident + lay.predictor_bytes + gates + down_max + kv + scratch
        cap = lay.n_bundles
        if mem_budget is not None:
            cap = min(cap, (mem_budget - fixed) // sum(slot)) if mem_budget > fixed else 0
            if cap < 1:
                held = (f"gate predictor {lay.predictor_bytes}" if pred else f"resident gate {gates}")
                raise ValueError(f"mem_budget {mem_budget} bytes is too small for windowed mode: it needs at least "
                                 f"{fixed + sum(slot)} bytes (resident weights {resident} + {held} + "
                                 f"one slab slot per layer {sum(slot)} + KV cache and activations {kv + scratch})")
        return MemoryPlan(mode, resident + lay.predictor_bytes, gates + down_max + cap * sum(slot), kv + scratch,
                          minimum, int(cap))
    if mem_budget is not None:
        need = full if mode == "resident" else minimum
        if mem_budget < need:
            raise ValueError(f"mem_budget {mem_budget} bytes is too small: this model needs at least {minimum} bytes "
                             f"(resident weights {resident} + FFN staging {staging} + KV cache and activations "
                             f"{kv + scratch} for n_ctx {n_ctx})" + (f"; {mode} mode needs {need}" if need != minimum else ""))
    if mode == "resident":
        return MemoryPlan(mode, resident, ffn, kv + scratch, minimum)
    # dense: keep as many whole bundles per layer resident as the budget leaves room for (the first
    # ones: the hottest when the neurons are ordered); only the rest is read every token
    hot = 0
    if mem_budget is not None:
        def ffn_held(r: int) -> int:
            stage = 2 * max(lay.layer_bytes(i) - r * lay.bundle_stride[i] for i in range(lay.n_layer))
            return r * sum(lay.bundle_stride) + stage + down_max
        fixed = resident + kv + scratch
        hot = max(r for r in range(lay.n_bundles + 1) if r == 0 or fixed + ffn_held(r) <= mem_budget)
        staging = ffn_held(hot)
    return MemoryPlan(mode, resident, staging, kv + scratch, minimum, 0, hot)


def calibrate_thresholds(engine, tokens, density: float) -> list[float]:
    """Per-layer thresholds for windowed mode so that about `density` of each layer's bundles are
    active on `tokens` (CATS-style: a quantile of the observed scores, max |silu(gate)| per bundle and
    token, measured with every bundle active). Calibrate on a different text than you evaluate on.
    The engine must be in windowed mode; its thresholds are left as they were."""
    from . import _core

    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    info = engine.flash_info()
    if info is None or info["mode"] != "windowed":
        raise ValueError("calibration needs an engine in windowed flash mode")
    m = engine._model
    _core.model_flash_set_thresholds(m, [])
    _core.model_flash_record_scores(m, True)
    try:
        engine.reset()
        engine.eval(list(tokens))
        scores = _core.model_flash_take_scores(m)
    finally:
        _core.model_flash_record_scores(m, False)
        engine.reset()
    return [float(np.quantile(s, 1.0 - density)) if density < 1.0 else -1.0 for s in scores]
