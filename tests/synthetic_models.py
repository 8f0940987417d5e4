"""Writes small random GGUF decoders (llama, qwen2, gemma3, bitnet) with `gguf.GGUFWriter`, for
tests that need an architecture's every part exercised without a real checkpoint (no BitNet GGUF
is reachable here) or with settings a real one does not reach cheaply (a sliding window of 8).

Weights are random but shaped like a trained model's (norms near 1, small projections), quantized
with `gguf.quants` to the types named by the caller. Test helper only; shares no code with lutllm.
"""
from __future__ import annotations

import numpy as np
import gguf
from gguf.quants import quantize

T = gguf.GGMLQuantizationType


def random_q4_k(rng, rows, cols):
    """Q4_K blocks (rows x cols/256 of 144 bytes) with random codes and 6-bit scales and mins, and
    d, dmin chosen so the weights d*sc*q - dmin*m centre on 0 with |w| < 3/sqrt(cols). (gguf.quants
    cannot quantize to Q4_K; it dequantizes it, which is what the tests compare against.)"""
    raw = rng.integers(0, 256, size=(rows, cols // 256, 144), dtype=np.uint8)
    d = np.float16(3.0 / (63 * 15 * np.sqrt(cols)))
    raw[:, :, 0:2] = np.frombuffer(d.tobytes(), np.uint8)
    raw[:, :, 2:4] = np.frombuffer(np.float16(7.5 * float(d)).tobytes(), np.uint8)
    return raw.reshape(rows, -1)


def _add(w, name, data, qtype=T.F32, rng=None):
    if qtype == T.Q4_K:  # random blocks of the data's shape (the values of `data` are not used)
        w.add_tensor(name, random_q4_k(rng, *np.shape(data)), raw_dtype=qtype)
        return
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == T.F32:
        w.add_tensor(name, data)
    elif qtype == T.F16:
        w.add_tensor(name, data.astype(np.float16))
    else:
        w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)


def write_model(path, arch="llama", *, n_layer=2, d=256, n_head=4, n_kv=2, head_dim=None, d_ff=512,
                n_vocab=384, weight_type=T.Q8_0, embd_type=T.F16, tied=True, seed=0,
                sliding_window=8, hidden_act=None, tensor_scales=False, ffn_type=None):
    """Write a random model; returns the path. head_dim defaults to d / n_head. ffn_type: the FFN
    matrices' type (default weight_type); Q4_K gets random blocks (random_q4_k)."""
    rng = np.random.default_rng(seed)
    hd = head_dim or d // n_head
    q_dim, kv_dim = n_head * hd, n_kv * hd
    w = gguf.GGUFWriter(str(path), arch)
    p = arch + "."
    w.add_uint32(p + "block_count", n_layer)
    w.add_uint32(p + "embedding_length", d)
    w.add_uint32(p + "feed_forward_length", d_ff)
    w.add_uint32(p + "attention.head_count", n_head)
    w.add_uint32(p + "attention.head_count_kv", n_kv)
    w.add_uint32(p + "context_length", 256)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(p + "rope.freq_base", 1e6 if arch in ("qwen2", "gemma3") else 1e4)
    if head_dim:
        w.add_uint32(p + "attention.key_length", hd)
        w.add_uint32(p + "attention.value_length", hd)
    if arch == "gemma3":
        w.add_uint32(p + "attention.sliding_window", sliding_window)
    if hidden_act:
        w.add_string(p + "hidden_act", hidden_act)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_string("tokenizer.ggml.pre", "default")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(n_vocab)])
    w.add_array("tokenizer.ggml.token_type", [1] * n_vocab)
    w.add_array("tokenizer.ggml.merges", ["< t"])  # one rule: gguf drops an empty array
    w.add_uint32("tokenizer.ggml.bos_token_id", 1)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)

    def norm(n):
        return 1.0 + 0.1 * rng.standard_normal(n)

    def mat(rows, cols):
        if weight_type in (T.TQ1_0, T.TQ2_0):  # ternary weights times one per-row scale
            return rng.choice([-1.0, 0.0, 1.0], size=(rows, cols)) * (0.5 / np.sqrt(cols))
        return rng.standard_normal((rows, cols)) / np.sqrt(cols)

    _add(w, "token_embd.weight", rng.standard_normal((n_vocab, d)), embd_type)
    _add(w, "output_norm.weight", norm(d))
    if not tied:
        _add(w, "output.weight", mat(n_vocab, d), weight_type)
    for i in range(n_layer):
        b = f"blk.{i}."
        _add(w, b + "attn_norm.weight", norm(d))
        _add(w, b + "attn_q.weight", mat(q_dim, d), weight_type)
        _add(w, b + "attn_k.weight", mat(kv_dim, d), weight_type)
        _add(w, b + "attn_v.weight", mat(kv_dim, d), weight_type)
        _add(w, b + "attn_output.weight", mat(d, q_dim), weight_type)
        _add(w, b + "ffn_norm.weight", norm(d))
        ft = weight_type if ffn_type is None else ffn_type
        _add(w, b + "ffn_gate.weight", mat(d_ff, d), ft, rng)
        _add(w, b + "ffn_up.weight", mat(d_ff, d), ft, rng)
        _add(w, b + "ffn_down.weight", mat(d, d_ff), ft, rng)
        if arch == "qwen2":
            for name, n in (("attn_q", q_dim), ("attn_k", kv_dim), ("attn_v", kv_dim)):
                _add(w, b + name + ".bias", 0.5 * rng.standard_normal(n))
        if arch == "gemma3":
            _add(w, b + "attn_q_norm.weight", norm(hd))
            _add(w, b + "attn_k_norm.weight", norm(hd))
            _add(w, b + "post_attention_norm.weight", norm(d))
            _add(w, b + "post_ffw_norm.weight", norm(d))
        if arch == "bitnet":
            _add(w, b + "attn_sub_norm.weight", norm(q_dim))
            _add(w, b + "ffn_sub_norm.weight", norm(d_ff))
            if tensor_scales:
                for name in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
                    _add(w, b + name + ".scale", np.array([rng.uniform(0.5, 2.0)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
