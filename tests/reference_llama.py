"""Independent float reference of the llama forward pass, in numpy over `gguf`-dequantized weights.

Test helper only: it shares no code with lutllm (it reads the file with gguf.GGUFReader and
dequantizes with gguf.quants), so agreement with the runtime means something.
"""
from __future__ import annotations

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def _field(reader, key):
    return reader.fields[key].contents()


class ReferenceLlama:
    def __init__(self, path: str, dtype=np.float64):
        r = GGUFReader(path)
        self.dtype = dtype
        arch = _field(r, "general.architecture")
        assert arch == "llama", arch
        p = arch + "."
        self.n_layer = _field(r, p + "block_count")
        self.d = _field(r, p + "embedding_length")
        self.n_head = _field(r, p + "attention.head_count")
        self.n_kv = _field(r, p + "attention.head_count_kv")
        self.hd = self.d // self.n_head
        self.eps = _field(r, p + "attention.layer_norm_rms_epsilon")
        self.base = _field(r, p + "rope.freq_base")
        self.rope_dim = _field(r, p + "rope.dimension_count")
        self.w = {}
        for t in r.tensors:
            # gguf.quants.dequantize returns the logical shape (rows, cols) for 2-D tensors
            self.w[t.name] = dequantize(t.data, t.tensor_type).astype(dtype).reshape(
                [int(x) for x in reversed(t.shape)]
            )
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def _rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x, pos):  # x: (n, heads, hd); llama "normal" mode rotates adjacent pairs
        half = self.rope_dim // 2
        inv = self.base ** (-2.0 * np.arange(half) / self.rope_dim)
        ang = np.asarray(pos)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0 : 2 * half : 2].copy(), x[..., 1 : 2 * half : 2].copy()
        out = x.copy()
        out[..., 0 : 2 * half : 2] = a * c - b * s
        out[..., 1 : 2 * half : 2] = a * s + b * c
        return out

    def forward(self, tokens, act_quant=None):
        """Logits for every position of `tokens` (from an empty cache).

        act_quant: optional function applied to every matmul input (to emulate the runtime's
        int8 activation quantization); None = exact float math.
        """
        q8 = act_quant or (lambda v: v)
        n = len(tokens)
        x = self.w["token_embd.weight"][np.asarray(tokens)]
        pos = np.arange(n)
        mask = np.triu(np.full((n, n), -np.inf), 1)
        g = self.n_head // self.n_kv
        for i in range(self.n_layer):
            W = lambda name: self.w[f"blk.{i}.{name}.weight"]  # noqa: E731
            h = q8(self._rms(x, W("attn_norm")))
            q = (h @ W("attn_q").T).reshape(n, self.n_head, self.hd)
            k = (h @ W("attn_k").T).reshape(n, self.n_kv, self.hd)
            v = (h @ W("attn_v").T).reshape(n, self.n_kv, self.hd)
            q, k = self._rope(q, pos), self._rope(k, pos)
            out = np.empty_like(q)
            for hh in range(self.n_head):
                kv = hh // g
                s = q[:, hh] @ k[:, kv].T / np.sqrt(self.hd) + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                out[:, hh] = s @ v[:, kv]
            x = x + q8(out.reshape(n, -1)) @ W("attn_output").T
            h = q8(self._rms(x, W("ffn_norm")))
            a = h @ W("ffn_gate").T
            b = h @ W("ffn_up").T
            x = x + q8(a / (1 + np.exp(-a)) * b) @ W("ffn_down").T
        x = q8(self._rms(x, self.w["output_norm.weight"]))
        return x @ self.w["output.weight"].T


def quantize_act_q8(x):
    """int8 activation quantization per 32 values, as llama.cpp's q8 formats: d = max|x|/127,
    q = round-half-away(x/d); returns the dequantized values d*q."""
    shape = x.shape
    v = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(v).max(axis=1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    s = v * inv
    q = np.sign(s) * np.floor(np.abs(s) + np.float32(0.5))
    return (q * d).reshape(shape).astype(x.dtype)
