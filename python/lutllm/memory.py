"""Memory a model will need (estimated from the GGUF header before loading) and memory available
(/proc/meminfo and the cgroup limit), with advice when it does not fit.

Only arithmetic and /proc, /sys reads: it allocates nothing and never refuses to load (mapped
weights can page from storage). The byte counts mirror runtime/model.cc (Context buffers) and
runtime/linear.cc (which weights are repacked for the LUT kernels); tests/test_memory.py checks them
against the RSS the runtime really adds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Linear weights the runtime binds (model.cc); only these can be repacked for table lookup.
_LINEAR = re.compile(r"^(output|blk\.\d+\.(attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down))\.weight$")
_F32 = 4
_F16 = 2  # the KV cache holds fp16
_ACT_Q8_BYTES = 40  # sizeof(ActQ8): one block of 32 int8 activations + 2 floats (kernels.h)
_LUT_ACT_BYTES = 40  # sizeof(LutAct) (lut.h)
_MIN_GROUP = 16  # smallest LUT group (Q2_K): the most activation-table scales per row


class MemoryFitWarning(UserWarning):
    """The estimated memory need of a model exceeds the memory available to this process."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a loaded model + one context will use (see estimate_memory for each term)."""

    weights_file: int  # every tensor's bytes in the file (memory-mapped, file-backed pages)
    weights_mapped_hot: int  # mapped bytes read on every token (tensors used in place)
    repack: int  # anonymous copies of the weights repacked for the LUT kernels
    repack_transient: int  # temporary buffers while one tensor is repacked (load time only)
    n_repacked: int  # tensors repacked
    kv_cache: int  # keys + values, fp16, for n_ctx positions (fewer in sliding-window layers)
    kv_per_token: int  # what one more context position adds (the layers that keep every position)
    scratch: int  # activations, attention scores, activation tables, one logits row
    n_ctx: int
    n_batch: int
    weights_lookup: int = 0  # mapped tables read a few rows per token (an untied token embedding)

    @property
    def anonymous(self) -> int:
        """Memory that cannot be paged back to the model file: repacked weights, KV cache, scratch."""
        return self.repack + self.kv_cache + self.scratch

    @property
    def total(self) -> int:
        """Steady-state need while generating: the hot mapped weights plus the anonymous memory."""
        return self.weights_mapped_hot + self.anonymous


@dataclass(frozen=True)
class MemoryAvailable:
    """Bytes this process can still use and where the binding limit comes from."""

    bytes: int
    source: str  # "MemAvailable", "cgroup v1 /path" or "cgroup v2 /path"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def repacked_bytes(ggml_type: int, rows: int, k: int) -> int | None:
    """Bytes of the LUT copy the runtime makes of a (rows x k) linear weight of this GGUF type, or
    None when the type stays mapped (not <= 4-bit, or a shape the LUT layout cannot hold)."""
    from . import _core

    try:
        fmt = _core.lut_format_for_ggml(int(ggml_type), _core.LUT_TERNARY_REPACK_GROUP)
        return int(_core.lut_packed_bytes(fmt, int(rows), int(k)))
    except ValueError:
        return None


def repack_transient_bytes(ggml_type: int, rows: int, k: int) -> int:
    """Temporary bytes lut_repack_ggml holds while repacking one tensor: one byte per weight, plus
    f32 scale and offset per group, or (k-quant sub-scales) one byte each of sc and m per group and
    f32 d and dmin per 256 weights."""
    from . import _core

    _, group, scale_bytes, _ = _core.lut_format_for_ggml(int(ggml_type), _core.LUT_TERNARY_REPACK_GROUP)
    if scale_bytes in (1, 3):  # 8- or 4-bit k-quant sub-scales (lut.h)
        return rows * k + 2 * rows * (k // group) + 2 * rows * (k // 256) * _F32
    return rows * k + 2 * rows * (k // group) * _F32


def kv_rows_for_layer(window: int, n_ctx: int, n_batch: int, full_window_kv: bool = False) -> int:
    """Positions of KV cache one layer keeps (runtime/model.h kv_rows_for_layer): every position, or
    for a sliding-window layer a buffer of 2 * (window + batch) rows that slides forward."""
    if window <= 0 or full_window_kv:
        return n_ctx
    return min(n_ctx, 2 * (window + min(n_batch, n_ctx)))


def estimate_memory(gguf, config, n_ctx: int, n_batch: int = 512, lut: bool = True,
                    n_threads: int = 1, full_window_kv: bool = False) -> MemoryEstimate:
    """Estimate what Engine(gguf file, n_ctx, n_batch, lut, n_threads) will use, from shapes alone.

    - weights: every tensor is mapped; with lut, <= 4-bit linear weights (Q4_0, Q4_1, Q4_K, Q3_K, Q2_K,
      TQ1_0, TQ2_0) are read once and copied into the packed LUT layout (owned, anonymous memory),
      so only the other tensors' mapped pages stay hot. An untied token embedding (the model has its
      own output.weight) is only read a row per token: it is mapped but not hot (weights_lookup).
    - KV cache: per layer kv_rows_for_layer positions (n_ctx, or fewer for sliding-window layers)
      * n_head_kv * head_dim * 2 (K and V) * 2 bytes (fp16); kv_per_token counts the layers that
      grow with n_ctx.
    - scratch: the Context's per-batch buffers for min(n_batch, n_ctx) tokens, attention scores
      per thread, the int8 and LUT activation buffers of the widest linear input, one logits row.
    """
    c = config
    hot = 0
    repack = 0
    transient = 0
    n_repacked = 0
    lookup = 0
    for t in gguf.tensors.values():
        if t.name == "token_embd.weight" and "output.weight" in gguf.tensors:
            lookup += int(t.nbytes)
            continue
        packed = None
        if lut and _LINEAR.match(t.name) and len(t.shape) >= 2:
            k, rows = int(t.shape[0]), 1
            for d in t.shape[1:]:
                rows *= int(d)
            packed = repacked_bytes(t.ggml_type, rows, k)
        if packed is None:
            hot += int(t.nbytes)
        else:
            repack += packed
            n_repacked += 1
            transient = max(transient, repack_transient_bytes(t.ggml_type, rows, k))
    kv_dim = c.n_head_kv * c.head_dim
    windows = list(c.layer_window) or [0] * c.n_layer
    kv_rows = [kv_rows_for_layer(w, n_ctx, n_batch, full_window_kv) for w in windows]
    kv_per_token = sum(r == n_ctx for r in kv_rows) * kv_dim * 2 * _F16
    nb = max(1, min(n_batch, n_ctx))
    q_dim = c.n_head * c.head_dim
    floats = nb * (c.d_model + max(c.d_model, q_dim) + 2 * q_dim + 2 * kv_dim + 2 * c.d_ff)
    floats += max(1, n_threads) * n_ctx  # attention scores
    k_max = max(c.d_model, q_dim, c.d_ff)
    act = nb * ((k_max // 32) * _ACT_Q8_BYTES  # int8 activations
                + k_max * 4  # LUT tables: k/4 quads x 16 bytes
                + (k_max // _MIN_GROUP) * _F32 + (k_max // 16) * _F32  # table scales, 16-sums
                + _LUT_ACT_BYTES)
    scratch = floats * _F32 + act + c.n_vocab * _F32
    return MemoryEstimate(
        weights_file=sum(int(t.nbytes) for t in gguf.tensors.values()),
        weights_mapped_hot=hot, repack=repack, repack_transient=transient, n_repacked=n_repacked,
        kv_cache=sum(kv_rows) * kv_dim * 2 * _F16, kv_per_token=kv_per_token, scratch=scratch,
        n_ctx=n_ctx, n_batch=n_batch, weights_lookup=lookup,
    )


# ---- what is available ---------------------------------------------------------------------------
_UNLIMITED = 1 << 60  # cgroup v1 writes ~2^63 for "no limit"


def _read_int(path: Path) -> int | None:
    try:
        s = path.read_text().strip()
    except OSError:
        return None
    if s == "max":
        return None
    try:
        v = int(s)
    except ValueError:
        return None
    return None if v >= _UNLIMITED else v


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, val = line.partition(" ")
            if name == key:
                return int(val)
    except (OSError, ValueError):
        pass
    return 0


def meminfo_available(meminfo: str = "/proc/meminfo") -> int | None:
    """MemAvailable in bytes, or None where the kernel does not report it."""
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_dirs(root: Path, rel: str) -> list[Path]:
    """The cgroup directory of this process and its ancestors up to the mount root (a cgroup
    namespace can make `rel` point nowhere: then only the root is checked)."""
    rel = rel.strip("/")
    out = []
    parts = rel.split("/") if rel else []
    for i in range(len(parts), -1, -1):
        d = root.joinpath(*parts[:i]) if i else root
        if d.is_dir():
            out.append(d)
    return out


def cgroup_available(proc_cgroup: str = "/proc/self/cgroup", sys_root: str = "/sys/fs/cgroup"
                     ) -> tuple[int, str] | None:
    """(bytes left under the tightest cgroup memory limit, where), or None when no limit applies.

    Left = limit - (usage - inactive file cache), since inactive page cache is reclaimed before the
    limit is enforced. v1: memory.limit_in_bytes / memory.usage_in_bytes under the `memory`
    controller's path; v2: memory.max / memory.current under the unified path. Ancestors count too.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(sys_root)
    best: tuple[int, str] | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if "memory" in controllers.split(","):  # v1
            base, lim_f, use_f, inactive = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes", \
                "total_inactive_file"
            kind = "cgroup v1"
        elif controllers == "" and parts[0] == "0":  # v2 unified hierarchy
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
            lim_f, use_f, inactive, kind = "memory.max", "memory.current", "inactive_file", "cgroup v2"
        else:
            continue
        for d in _cgroup_dirs(base, rel):
            limit = _read_int(d / lim_f)
            if limit is None:
                continue
            usage = _read_int(d / use_f) or 0
            usage = max(0, usage - _stat_value(d / "memory.stat", inactive))
            left = max(0, limit - usage)
            if best is None or left < best[0]:
                best = (left, f"{kind} {d}")
    return best


def available_memory() -> MemoryAvailable | None:
    """The smaller of MemAvailable and what the cgroup limit leaves; None if neither is known."""
    cands = []
    m = meminfo_available()
    if m is not None:
        cands.append(MemoryAvailable(m, "MemAvailable"))
    cg = cgroup_available()
    if cg is not None:
        cands.append(MemoryAvailable(cg[0], cg[1]))
    return min(cands, key=lambda a: a.bytes) if cands else None


# ---- verdict -------------------------------------------------------------------------------------
def max_ctx_fitting(est: MemoryEstimate, budget: int, step: int = 256) -> int:
    """Largest n_ctx (a multiple of `step`) whose total need fits in `budget` bytes; 0 if none.
    Attention scores grow with n_ctx too, but are negligible next to the KV cache."""
    fixed = est.total - est.kv_per_token * est.n_ctx  # sliding-window layers' rows do not grow
    if budget <= fixed or est.kv_per_token <= 0:
        return 0
    return min(est.n_ctx, (budget - fixed) // est.kv_per_token) // step * step


def fit_advice(est: MemoryEstimate, avail: MemoryAvailable | None, mem_budget: int | None = None) -> str | None:
    """A warning with concrete advice when the model does not fit, else None.

    `mem_budget` (bytes), when given, is treated as a further limit on what is available."""
    limit, source = (avail.bytes, avail.source) if avail is not None else (None, "")
    if mem_budget is not None and (limit is None or mem_budget < limit):
        limit, source = mem_budget, "the memory budget"
    if limit is None or est.total <= limit:
        return None
    if est.anonymous > limit:
        head = (f"this model needs about {human_bytes(est.total)} ({human_bytes(est.anonymous)} of it cannot be "
                f"paged out) but only {human_bytes(limit)} is available ({source}): loading will likely be "
                f"killed or swap heavily.")
    else:
        head = (f"this model needs about {human_bytes(est.total)} but only {human_bytes(limit)} is available "
                f"({source}): weights will be re-read from storage while generating (slow).")
    tips = []
    if est.kv_cache > est.total // 8:
        fit = max_ctx_fitting(est, limit)
        ctx_tip = f"--ctx-size {fit} fits" if fit else "a smaller --ctx-size"
        tips.append(f"lower the context: the KV cache of {est.n_ctx} tokens takes {human_bytes(est.kv_cache)} "
                    f"({ctx_tip})")
    tips.append("use a smaller quantization of this model (e.g. 2-bit: lutllm quantize --bits 2)")
    tips.append("limit resident weights with --mem-budget (weights streamed from storage) where supported")
    return head + " Advice: " + "; ".join(tips) + "."


def describe_estimate(est: MemoryEstimate, avail: MemoryAvailable | None) -> str:
    """Lines for `lutllm info`: each term of the estimate, what is available, the verdict."""
    lines = [
        f"memory estimate (n_ctx {est.n_ctx}, n_batch {est.n_batch}):",
        f"  weights mapped    {human_bytes(est.weights_file):>10}  (file-backed; {human_bytes(est.weights_mapped_hot)} "
        f"read every token)",
        f"  LUT repack        {human_bytes(est.repack):>10}  ({est.n_repacked} tensors copied to the LUT layout; "
        f"+{human_bytes(est.repack_transient)} while loading)",
        f"  KV cache          {human_bytes(est.kv_cache):>10}  ({human_bytes(est.kv_per_token)} per token, fp16)",
        f"  scratch           {human_bytes(est.scratch):>10}",
        f"  total             {human_bytes(est.total):>10}  ({human_bytes(est.anonymous)} anonymous)",
    ]
    if avail is None:
        lines.append("  available         unknown")
    else:
        lines.append(f"  available         {human_bytes(avail.bytes):>10}  ({avail.source})")
    advice = fit_advice(est, avail)
    lines.append(f"  verdict           {'fits' if advice is None else 'does not fit'}")
    if advice:
        lines.append(f"  {advice}")
    return "\n".join(lines)
