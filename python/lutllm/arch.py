"""Architecture descriptions: turn GGUF metadata into the runtime's model config and check it.

Only reads metadata and tensor infos (names, shapes); the C++ runtime checks shapes again when it
binds tensors. Adding an architecture means adding its keys and rope style here and its graph in
runtime/model.cc.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SUPPORTED_ARCHITECTURES = ("llama",)

# How each family applies rotary embeddings (llama.cpp's rope types).
_ROPE_MODE = {"llama": "norm", "qwen2": "neox", "gemma3": "neox"}


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
    _check_layer_tensors(cfg, tensors, path)
    return cfg


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
