"""Architecture descriptions: turn GGUF metadata into the runtime's model config and check it.

Only reads metadata and tensor infos (names, shapes); the C++ runtime checks shapes again when it
binds tensors. Adding an architecture means adding its keys, rope style and tensors here and its
binder in runtime/model.cc (the decoder block is shared).

Family notes (what differs from llama, as llama.cpp reads the same GGUF):
- qwen2: q/k/v biases; rotary embedding on split halves (neox).
- gemma3: embeddings scaled by sqrt(d_model); q/k RMSNorm; post-attention and post-FFN norms;
  GELU (tanh) gate; sliding-window layers (window `attention.sliding_window`) with rope base 10000
  interleaved with global layers using `rope.freq_base`. The GGUF stores Gemma's RMSNorm weights as
  1 + w already, so the runtime's plain RMSNorm applies them unchanged.
- bitnet: sub-norms before the attention output and FFN down projections, optional per-tensor
  `.scale` multipliers, ternary weights (TQ1_0 / TQ2_0); activation from `bitnet.hidden_act`
  (relu2 for BitNet b1.58 2B4T, silu when absent, as llama.cpp does); tied output head.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3", "bitnet")

# How each family applies rotary embeddings (llama.cpp's rope types).
_ROPE_MODE = {"llama": "norm", "qwen2": "neox", "gemma3": "neox", "bitnet": "norm"}
# Gemma 3 files without an explicit layer pattern: every 6th layer is global (llama.cpp's default).
_GEMMA3_SWA_PERIOD = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0


class ModelFormatError(ValueError):
    """The GGUF is readable but does not describe a model lutllm can run."""


@dataclass
class ModelConfig:
    arch: str
    n_layer: int
    d_model: int
    n_head: int
    n_head_kv: int
    head_dim: int
    d_ff: int
    n_vocab: int
    n_ctx_train: int
    norm_eps: float
    rope_base: float
    rope_freq_scale: float
    rope_dim: int
    rope_mode: str
    ffn_act: str = "silu"
    embd_scale: float = 0.0  # 0: embeddings used as stored
    attn_scale: float = 0.0  # 0: 1/sqrt(head_dim)
    layer_window: list = field(default_factory=list)  # per layer; 0 = full causal attention
    layer_rope_base: list = field(default_factory=list)
    layer_rope_freq_scale: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _get(meta: dict, key: str, path: str, default=None, kind=int):
    if key not in meta:
        if default is not None:
            return default
        raise ModelFormatError(f"{path}: required metadata key '{key}' is missing")
    value = meta[key]
    try:
        if kind is int:
            if isinstance(value, bool) or int(value) != value:
                raise ValueError
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        raise ModelFormatError(f"{path}: metadata '{key}' = {value!r} is not a valid {kind.__name__}") from None


def model_config(meta: dict, tensors: dict, path: str = "model") -> ModelConfig:
    """Read the hyper-parameters of a GGUF model; `tensors` maps names to objects with `.shape`."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError(f"{path}: metadata 'general.architecture' is missing")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFormatError(
            f"{path}: architecture '{arch}' is not supported (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    p = arch + "."
    n_layer = _get(meta, p + "block_count", path)
    d_model = _get(meta, p + "embedding_length", path)
    n_head = _get(meta, p + "attention.head_count", path)
    n_head_kv = _get(meta, p + "attention.head_count_kv", path, default=n_head)
    if min(n_layer, d_model, n_head, n_head_kv) <= 0:
        raise ModelFormatError(f"{path}: block_count, embedding_length and head counts must be positive")
    if n_head % n_head_kv:
        raise ModelFormatError(f"{path}: head_count {n_head} is not a multiple of head_count_kv {n_head_kv}")
    head_dim = _get(meta, p + "attention.key_length", path, default=d_model // n_head)
    value_dim = _get(meta, p + "attention.value_length", path, default=head_dim)
    if value_dim != head_dim:
        raise ModelFormatError(f"{path}: key length {head_dim} != value length {value_dim} is not supported")
    d_ff = _get(meta, p + "feed_forward_length", path)
    tokens = meta.get("tokenizer.ggml.tokens")
    n_vocab = _get(meta, p + "vocab_size", path, default=len(tokens) if tokens is not None else None)
    emb = tensors.get("token_embd.weight")
    if emb is None:
        raise ModelFormatError(f"{path}: tensor 'token_embd.weight' is missing")
    if tuple(emb.shape[:2]) != (d_model, n_vocab):
        raise ModelFormatError(
            f"{path}: tensor 'token_embd.weight' has shape {tuple(emb.shape)}, expected ({d_model}, {n_vocab})"
        )
    rope_freq_scale = 1.0
    scaling = meta.get(p + "rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ModelFormatError(f"{path}: rope scaling '{scaling}' is not supported (supported: linear)")
        rope_freq_scale = 1.0 / _get(meta, p + "rope.scaling.factor", path, kind=float)
    cfg = ModelConfig(
        arch=arch,
        n_layer=n_layer,
        d_model=d_model,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        d_ff=d_ff,
        n_vocab=n_vocab,
        n_ctx_train=_get(meta, p + "context_length", path),
        norm_eps=_get(meta, p + "attention.layer_norm_rms_epsilon", path, default=1e-5, kind=float),
        rope_base=_get(meta, p + "rope.freq_base", path, default=10000.0, kind=float),
        rope_freq_scale=rope_freq_scale,
        rope_dim=_get(meta, p + "rope.dimension_count", path, default=head_dim),
        rope_mode=_ROPE_MODE[arch],
    )
    if arch == "gemma3":
        _gemma3_config(cfg, meta, path)
    elif arch == "bitnet":
        act = meta.get(p + "hidden_act", "silu")
        acts = {"silu": "silu", "relu2": "relu2", "relu_squared": "relu2", "gelu": "gelu"}
        if act not in acts:
            raise ModelFormatError(f"{path}: bitnet hidden_act '{act}' is not supported (supported: {', '.join(acts)})")
        cfg.ffn_act = acts[act]
    _check_layer_tensors(cfg, tensors, path)
    return cfg


def _gemma3_config(cfg: ModelConfig, meta: dict, path: str) -> None:
    p = "gemma3."
    cfg.ffn_act = "gelu"
    cfg.embd_scale = math.sqrt(cfg.d_model)
    if cfg.n_layer == 62:  # the 27B model scales queries by its d_model / n_head, not head_dim
        cfg.attn_scale = 1.0 / math.sqrt(cfg.d_model / cfg.n_head)
    window = _get(meta, p + "attention.sliding_window", path)
    if window <= 0:
        raise ModelFormatError(f"{path}: metadata '{p}attention.sliding_window' = {window} must be positive")
    pattern = meta.get(p + "attention.sliding_window_pattern")
    if pattern is None:
        local = [i % _GEMMA3_SWA_PERIOD < _GEMMA3_SWA_PERIOD - 1 for i in range(cfg.n_layer)]
    elif isinstance(pattern, (list, tuple)) or hasattr(pattern, "__len__"):
        local = [bool(v) for v in pattern]
        if len(local) != cfg.n_layer:
            raise ModelFormatError(
                f"{path}: '{p}attention.sliding_window_pattern' lists {len(local)} layers, the model has {cfg.n_layer}"
            )
    else:
        period = _get(meta, p + "attention.sliding_window_pattern", path)
        if period <= 0:
            raise ModelFormatError(f"{path}: '{p}attention.sliding_window_pattern' = {period} must be positive")
        local = [i % period < period - 1 for i in range(cfg.n_layer)]
    cfg.layer_window = [window if is_local else 0 for is_local in local]
    cfg.layer_rope_base = [_GEMMA3_LOCAL_ROPE_BASE if is_local else cfg.rope_base for is_local in local]
    cfg.layer_rope_freq_scale = [1.0 if is_local else cfg.rope_freq_scale for is_local in local]


def _check_layer_tensors(cfg: ModelConfig, tensors: dict, path: str) -> None:
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    expected = {
        "attn_norm.weight": (cfg.d_model,),
        "attn_q.weight": (cfg.d_model, q_dim),
        "attn_k.weight": (cfg.d_model, kv_dim),
        "attn_v.weight": (cfg.d_model, kv_dim),
        "attn_output.weight": (q_dim, cfg.d_model),
        "ffn_norm.weight": (cfg.d_model,),
        "ffn_gate.weight": (cfg.d_model, cfg.d_ff),
        "ffn_up.weight": (cfg.d_model, cfg.d_ff),
        "ffn_down.weight": (cfg.d_ff, cfg.d_model),
    }
    if cfg.arch == "qwen2":
        expected.update({"attn_q.bias": (q_dim,), "attn_k.bias": (kv_dim,), "attn_v.bias": (kv_dim,)})
    elif cfg.arch == "gemma3":
        expected.update({
            "attn_q_norm.weight": (cfg.head_dim,),
            "attn_k_norm.weight": (cfg.head_dim,),
            "post_attention_norm.weight": (cfg.d_model,),
            "post_ffw_norm.weight": (cfg.d_model,),
        })
    elif cfg.arch == "bitnet":
        expected.update({"attn_sub_norm.weight": (q_dim,), "ffn_sub_norm.weight": (cfg.d_ff,)})
    for i in range(cfg.n_layer):
        for suffix, shape in expected.items():
            name = f"blk.{i}.{suffix}"
            t = tensors.get(name)
            if t is None:
                raise ModelFormatError(f"{path}: tensor '{name}' is missing")
            if tuple(t.shape) != shape:
                raise ModelFormatError(f"{path}: tensor '{name}' has shape {tuple(t.shape)}, expected {shape}")
    if "output_norm.weight" not in tensors:
        raise ModelFormatError(f"{path}: tensor 'output_norm.weight' is missing")
