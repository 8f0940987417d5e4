"""`lutllm quantize`: requantize a GGUF model's linear-layer weights into the packed LUT layout.

Each linear weight (blk.N.attn_q/k/v/qkv/output, ffn_gate/up/down; the output head on request) is
decoded to float32 with the runtime's own decoders, quantized by the C++ quantizer (GIL released,
row chunks spread over threads) and stored as an I8 byte tensor described by lutllm.quant.*
metadata (see gguf_file.py). Everything else (embeddings, norms, biases, metadata) is copied as is.
Scales: fp16 s (and o) per group of 32/64/128, or (scales "kq") k-quant sub-scales: fp16 d, dmin
per 256 weights and small integer sc, m per group (_core.lut_quantize_kq: W2 and W3 at group 16, W4
at group 32; a tensor whose k is not a multiple of 256 falls back to fp16 scales at group 32).
The file is streamed tensor by tensor into a temporary file beside OUT and renamed at the end;
an error or Ctrl-C removes it. Not here: the packed layout itself (native/include/lutllm/lut.h).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import gguf

from .gguf_file import (LUT_KEY_LAYOUTS, LUT_KEY_METHOD, LUT_KEY_PREFIX, LUT_KEY_TENSORS,
                        LUT_KEY_VERSION, LUT_LAYOUT_VERSION, LUT_ROWS, LUT_SUPER_K, GGUFFile, LutLayout,
                        TensorInfo)

__all__ = ["BITS", "GROUPS", "KQ_GROUPS", "METHODS", "SCALES", "QuantizeError", "QuantizeReport", "quantize_model"]

BITS = {"1": 1, "2": 2, "3": 3, "4": 4, "ternary": 5}
GROUPS = (32, 64, 128)
METHODS = {"rtn": 0, "mse": 1}  # values: the method argument of _core.lut_quantize
SCALES = ("fp16", "kq")
KQ_GROUPS = {2: 16, 3: 16, 4: 32}  # the group of each kind with k-quant sub-scales (lut_kq_format)
KQ_FALLBACK_GROUP = 32  # fp16 group of a tensor that k-quant sub-scales cannot hold (k % 256 != 0)
OUT_ALIGNMENT = 64  # data offsets of the output: whole cache lines for every packed tensor
_LINEAR = re.compile(r"^blk\.\d+\.(attn_q|attn_k|attn_v|attn_qkv|attn_output|ffn_gate|ffn_up|ffn_down)\.weight$")
_CHUNK_WEIGHTS = 1 << 18  # weights per task: small enough to bound memory, large enough to amortize
# --mix: extra bits for the tensors whose error hurts most, as llama.cpp's low-bit recipes do (its Q2_K
# keeps ffn_down and attn_output at 3 bits and attn_v at 3-4). Measured on Qwen2.5-Coder-1.5B (README):
# a 2-bit kq mix with the head at 3 bits scores perplexity 6.03 (694 MiB), at 4 bits 5.89 (723 MiB),
# but the head is a fifth of the bytes each token reads, so 3 bits decode ~5% faster.
_MIX_EXTRA_BITS = {"attn_v": 2, "ffn_down": 1, "attn_output": 1, "output": 1}


class QuantizeError(ValueError):
    """Bad arguments or an input that cannot be quantized; the message names the culprit."""


@dataclass
class QuantizeReport:
    src: str
    dst: str
    label: str                      # e.g. "w4g32"
    method: str
    packed: int = 0                 # tensors quantized
    copied: int = 0                 # tensors copied unchanged
    group_fallback: list[str] = field(default_factory=list)  # "name: g32" where k % group (kq: 256) != 0
    kept: list[str] = field(default_factory=list)  # linear weights left as they were (k % 32 != 0)
    weights: int = 0                # quantized weights
    sq_err: float = 0.0             # sum of squared errors over the quantized weights
    sq_ref: float = 0.0             # sum of squared source values
    seconds: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    @property
    def nmse(self) -> float:
        return self.sq_err / self.sq_ref if self.sq_ref > 0 else 0.0

    def summary(self) -> str:
        lines = [f"quantized {self.packed} tensors ({self.weights} weights) to {self.label} ({self.method}), "
                 f"copied {self.copied} in {self.seconds:.1f} s; NMSE {self.nmse:.3g}; "
                 f"{self.bytes_in / 2**20:.1f} MiB -> {self.bytes_out / 2**20:.1f} MiB"]
        if self.group_fallback:
            what = "fp16 scales where k is not a multiple of 256" if "kq" in self.label else \
                "smaller group where k is not a multiple of the group"
            lines.append(f"{what}: {_name_list(self.group_fallback)}")
        if self.kept:
            lines.append(f"left unquantized (k not a multiple of 32): {_name_list(self.kept)}")
        return "\n".join(lines)


def _name_list(entries: list[str]) -> str:
    """Tensor entries ("blk.N.role.weight" or "blk.N.role.weight: note") for a summary line: as they are
    when few, else one per role and note with its number of layers ("attn_q.weight: g32 (30 layers)")."""
    if len(entries) <= 8:
        return ", ".join(entries)
    counts: dict[str, int] = {}
    for e in entries:
        key = re.sub(r"^blk\.\d+\.", "blk.*.", e)
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{key} ({n} layers)" if key.startswith("blk.*.") else key for key, n in counts.items())


def _decodable_types() -> set[int]:
    from . import _core

    return {k["wtype"] for k in _core.kernel_list() if k["op"] == "dequant" and k["supported"]}


def _tensor_kind(name: str, kind: int, mix: bool) -> int:
    """Bits of one tensor: `kind`, or with mix, more for the sensitive ones (1..3 bits only, capped at 4;
    the output head, when quantized at all (--output-head), one more)."""
    if not mix or kind > 3:
        return kind
    role = "output" if name == "output.weight" else name.split(".")[-2] if name.startswith("blk.") else ""
    return min(4, kind + _MIX_EXTRA_BITS.get(role, 0))


def _kq_layout(kind: int) -> LutLayout:
    from . import _core

    return LutLayout(*(int(v) for v in _core.lut_kq_format(kind)))


def _plan(g: GGUFFile, kind: int, group: int, output_head: bool, report: QuantizeReport, mix: bool = False,
          kq: bool = False):
    """[(TensorInfo, LutLayout | None, requantize?)] in file order."""
    decodable = _decodable_types()
    plan = []
    for t in g.tensors.values():
        want = bool(_LINEAR.match(t.name)) or (output_head and t.name == "output.weight")
        if not want or len(t.shape) != 2:
            plan.append((t, t.lut, False))  # copied; a packed source tensor keeps its layout
            continue
        k = t.shape[0]
        knd = _tensor_kind(t.name, kind, mix)
        if kq and k % LUT_SUPER_K == 0:
            lay = _kq_layout(knd)
        else:
            g_want = KQ_FALLBACK_GROUP if kq else group
            g_use = next((gs for gs in (g_want, 64, 32) if gs <= g_want and k % gs == 0), None)
            if g_use is None:
                report.kept.append(t.name)
                plan.append((t, t.lut, False))
                continue
            if g_use != group or kq:
                report.group_fallback.append(f"{t.name}: g{g_use}")
            lay = LutLayout(knd, g_use, 2, 0 if knd == 5 else 1)
        if t.lut is None and t.ggml_type not in decodable:
            raise QuantizeError(f"{g.path}: tensor {t.name!r} has type {t.type_name}, which lutllm cannot decode")
        plan.append((t, lay, True))
    if not any(req for _, _, req in plan):
        raise QuantizeError(f"{g.path}: no linear-layer weights (blk.N.attn_*/ffn_*.weight) to quantize")
    return plan


def _byte_view(g: GGUFFile, t: TensorInfo, start: int, stop: int) -> np.ndarray:
    return np.asarray(g.mapping[t.offset + start:t.offset + stop])


def _row_bytes(t: TensorInfo) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.ggml_type)]
    return t.shape[0] // block * type_size


def _decode_rows(g: GGUFFile, t: TensorInfo, r0: int, r1: int) -> np.ndarray:
    """float32 (r1 - r0, k) of rows r0..r1 of a source tensor (r0 a multiple of 16)."""
    from . import _core

    k = t.shape[0]
    if t.lut is not None:  # a packed source: decode its row blocks
        rbb = t.lut.row_block_bytes(k)
        b0, b1 = r0 // LUT_ROWS * rbb, -(-r1 // LUT_ROWS) * rbb
        return _core.lut_unpack(_byte_view(g, t, b0, b1), t.lut.fmt, r1 - r0, k)
    rb = _row_bytes(t)
    return _core.dequant_rows(t.ggml_type, _byte_view(g, t, r0 * rb, r1 * rb), r1 - r0, k)


def _quantize_chunk(g, t, lay, method, out, r0, r1, stats):
    """Quantize rows r0..r1 of t into their row blocks of out; returns (sq_err, sq_ref)."""
    from . import _core

    k = t.shape[0]
    w = _decode_rows(g, t, r0, r1)
    rbb = lay.row_block_bytes(k)
    dst = out[r0 // LUT_ROWS * rbb: -(-r1 // LUT_ROWS) * rbb]
    if lay.is_kq:
        _core.lut_quantize_kq(w, lay.kind, method, dst)
    else:
        _core.lut_quantize(w, lay.kind, lay.group, method, dst)
    if not stats:
        return 0.0, 0.0
    d = _core.lut_unpack(dst, lay.fmt, r1 - r0, k).ravel()
    d -= w.ravel()
    return float(np.dot(d, d)), float(np.dot(w.ravel(), w.ravel()))  # fp32 sums per chunk: for a report


def _meta_value(val: Any, vt, sub) -> Any:
    """A metadata value as GGUFWriter packs it (strings as raw bytes: no re-encoding)."""
    VT = gguf.GGUFValueType
    if vt == VT.STRING:
        return val.encode("utf-8", "surrogateescape")
    if vt == VT.ARRAY:
        if sub == VT.STRING:
            return [s.encode("utf-8", "surrogateescape") for s in val]
        return [bool(x) for x in val] if sub == VT.BOOL else val.tolist()
    return val


class _Writer(gguf.GGUFWriter):
    """GGUFWriter that can also write empty metadata arrays (valid GGUF; the base class refuses)."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
        if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
            out = self._pack("I", vtype) if add_vtype else b""
            return out + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _check_paths(src: Path, dst: Path) -> None:
    parent = dst.parent
    if dst.is_dir():
        raise QuantizeError(f"output {str(dst)!r} is a directory; give a file name")
    if not parent.is_dir():
        raise QuantizeError(f"output directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise QuantizeError(f"output directory {str(parent)!r} is not writable")
    if dst.exists() and dst.resolve() == src.resolve():
        raise QuantizeError(f"output {str(dst)!r} is the input file; choose another name")


def quantize_model(src: str | os.PathLike[str], dst: str | os.PathLike[str], bits: str | int,
                   group: int | None = None, method: str = "mse", output_head: bool = False,
                   threads: int | None = None, progress: bool = True, stats: bool = True, mix: bool = False,
                   scales: str = "fp16") -> QuantizeReport:
    """Write a copy of GGUF `src` (a path or registry name) to `dst` with its linear weights in the
    packed LUT layout: `bits` 1..4 or "ternary", `group` weights per scale (fp16 scales; default
    32); `scales` "fp16" (one fp16 scale and offset per group) or "kq" (k-quant sub-scales, 2..4
    bits; the group follows from the bits: 16 for 2 and 3, 32 for 4; `group` must be left out or be
    that one); `mix` gives attn_v two more bits and ffn_down / attn_output and a head quantized by
    `output_head` one more (for 1..3 bits; at most 4). Returns a report."""
    from .models import resolve_model
    from .progress import Progress

    if str(bits) not in BITS:
        raise QuantizeError(f"bits must be one of {', '.join(BITS)}, got {bits!r}")
    if scales not in SCALES:
        raise QuantizeError(f"scales must be one of {', '.join(SCALES)}, got {scales!r}")
    kind = BITS[str(bits)]
    kq = scales == "kq"
    if kq:
        if kind not in KQ_GROUPS:
            raise QuantizeError(f"--scales kq takes --bits 2, 3 or 4 (k-quant sub-scales), got --bits {bits}")
        if group is not None and group != KQ_GROUPS[kind]:
            raise QuantizeError(f"--group does not apply with --scales kq (the group is {KQ_GROUPS[kind]} for "
                                f"{kind} bits); leave it out, got --group {group}")
        group = KQ_GROUPS[kind]
    elif group is None:
        group = 32
    elif group not in GROUPS:
        raise QuantizeError(f"group must be one of {', '.join(map(str, GROUPS))}, got {group!r}")
    if method not in METHODS:
        raise QuantizeError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if threads is not None and threads < 1:
        raise QuantizeError(f"threads must be >= 1, got {threads}")
    dst = Path(dst)
    src_path = resolve_model(str(src))
    _check_paths(Path(src_path), dst)
    g = GGUFFile(src_path)
    arch = g.architecture
    if arch is None:
        raise QuantizeError(f"{g.path}: not a model (metadata 'general.architecture' is missing)")
    base = _kq_layout(kind) if kq else LutLayout(kind, group, 2, 0)
    label = base.label + ("-mix" if mix and kind <= 3 else "")
    report = QuantizeReport(str(src_path), str(dst), label, method)
    plan = _plan(g, kind, group, output_head, report, mix, kq)
    if threads is None:
        from . import _core

        threads = int(_core.physical_cores())

    t_start = time.perf_counter()
    tmp, w = None, None
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lutllm-quantize")
    try:
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
        os.close(fd)
        w = _Writer(tmp, arch)
        VT = gguf.GGUFValueType
        for key, val in g.metadata.items():
            if key in ("general.architecture", "general.alignment") or key.startswith(LUT_KEY_PREFIX):
                continue
            vt, sub = g.metadata_types[key]
            w.add_key_value(key, _meta_value(val, vt, sub), vt, sub)
        w.add_custom_alignment(max(OUT_ALIGNMENT, g.alignment))
        packed = [(t.name, lay) for t, lay, _ in plan if lay is not None]
        w.add_key_value(LUT_KEY_VERSION, LUT_LAYOUT_VERSION, VT.UINT32)
        w.add_key_value(LUT_KEY_METHOD, method, VT.STRING)
        w.add_key_value(LUT_KEY_TENSORS, [n.encode() for n, _ in packed], VT.ARRAY, VT.STRING)
        w.add_key_value(LUT_KEY_LAYOUTS, [v for t, lay, _ in plan if lay is not None
                                          for v in (*lay.fmt, t.shape[0], t.shape[1])], VT.ARRAY, VT.INT64)
        for t, lay, _ in plan:
            if lay is not None:  # I8 bytes, numpy shape (row blocks, row-block bytes)
                ne0, ne1 = lay.stored_shape(t.shape[1], t.shape[0])
                w.add_tensor_info(t.name, (ne1, ne0), np.dtype(np.int8), ne0 * ne1, gguf.GGMLQuantizationType.I8)
            else:  # the source bytes; GGUFWriter turns a uint8 byte shape back into elements
                w.add_tensor_info(t.name, (*t.numpy_shape[:-1], t.nbytes // max(1, t.n_elements // t.shape[0])),
                                  np.dtype(np.uint8), t.nbytes, gguf.GGMLQuantizationType(t.ggml_type))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()

        def submit(t, lay):  # row chunks of one tensor -> (out, [(future, rows in chunk)])
            k, rows = t.shape
            out = np.empty(lay.packed_bytes(rows, k), dtype=np.uint8)
            step = max(LUT_ROWS, _CHUNK_WEIGHTS // k // LUT_ROWS * LUT_ROWS)
            return out, [(pool.submit(_quantize_chunk, g, t, lay, METHODS[method], out, r0, min(rows, r0 + step),
                                      stats), min(rows, r0 + step) - r0) for r0 in range(0, rows, step)]

        # tensors are written in order; the next tensor to quantize is already queued while the
        # current one finishes, so small tensors do not leave threads idle (at most 2 in flight)
        todo = [i for i, (_, _, requant) in enumerate(plan) if requant]
        pending: dict[int, tuple] = {}
        total = sum(t.nbytes for t, _, _ in plan)
        with Progress(total=total, desc=f"quantize {label}", enabled=progress) as bar:
            for i, (t, lay, requant) in enumerate(plan):
                report.bytes_in += t.nbytes
                if not requant:
                    w.write_tensor_data(_byte_view(g, t, 0, t.nbytes))
                    report.copied += 1
                    bar.update(t.nbytes)
                    continue
                for j in todo[todo.index(i):todo.index(i) + 2]:
                    if j not in pending:
                        pending[j] = submit(plan[j][0], plan[j][1])
                out, chunks = pending.pop(i)
                k, rows = t.shape
                for f, n in chunks:
                    e, r = f.result()
                    report.sq_err += e
                    report.sq_ref += r
                    bar.update(t.nbytes * n // rows)
                w.write_tensor_data(out)
                report.packed += 1
                report.weights += k * rows
        fout = w.fout[0]
        fout.flush()
        os.fsync(fout.fileno())
        w.close()
        w = None
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # running chunks still write into `out`
        if w is not None and w.fout:
            for f in w.fout:
                f.close()
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    pool.shutdown(wait=True)
    report.bytes_out = os.path.getsize(dst)
    report.seconds = time.perf_counter() - t_start
    return report
