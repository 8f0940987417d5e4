"""Independent float reference of the decoder forward pass (llama, qwen2, gemma3, bitnet), in numpy
over `gguf`-dequantized weights.

Test helper only: it shares no code with lutllm (it reads the file with gguf.GGUFReader and
dequantizes with gguf.quants), so agreement with the runtime means something. Each family's
differences are written out inline, from the published model definitions as llama.cpp runs them.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


class ReferenceModel:
    def __init__(self, path: str, dtype=np.float64, skip=()):
        r = GGUFReader(path)
        self.dtype = dtype
        self.arch = arch = _field(r, "general.architecture")
        assert arch in ("llama", "qwen2", "gemma3", "bitnet"), arch
        p = arch + "."
        self.n_layer = _field(r, p + "block_count")
        self.d = _field(r, p + "embedding_length")
        self.n_head = _field(r, p + "attention.head_count")
        self.n_kv = _field(r, p + "attention.head_count_kv")
        self.hd = _field(r, p + "attention.key_length", self.d // self.n_head)
        self.eps = _field(r, p + "attention.layer_norm_rms_epsilon")
        self.base = _field(r, p + "rope.freq_base", 10000.0)
        self.rope_dim = _field(r, p + "rope.dimension_count", self.hd)
        self.neox = arch in ("qwen2", "gemma3")  # rotate split halves instead of adjacent pairs
        self.window = [0] * self.n_layer
        self.layer_base = [self.base] * self.n_layer
        if arch == "gemma3":  # every 6th layer global, the others local with a window and base 1e4
            for i in range(self.n_layer):
                if i % 6 != 5:
                    self.window[i] = _field(r, p + "attention.sliding_window")
                    self.layer_base[i] = 10000.0
        self.act = {"llama": "silu", "qwen2": "silu", "gemma3": "gelu",
                    "bitnet": _field(r, p + "hidden_act", "silu")}[arch]
        self.w = {}
        for t in r.tensors:
            if any(s in t.name for s in skip):
                continue
            # gguf.quants.dequantize returns the logical shape (rows, cols) for 2-D tensors
            self.w[t.name] = dequantize(t.data, t.tensor_type).astype(dtype).reshape(
                [int(x) for x in reversed(t.shape)]
            )
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]

    def _rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def _rope(self, x, pos, base):  # x: (n, heads, hd)
        half = self.rope_dim // 2
        inv = base ** (-2.0 * np.arange(half) / self.rope_dim)
        ang = np.asarray(pos)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.neox:
            i0, i1 = np.arange(half), np.arange(half) + half
        else:
            i0, i1 = np.arange(0, 2 * half, 2), np.arange(1, 2 * half, 2)
        a, b = x[..., i0].copy(), x[..., i1].copy()
        out = x.copy()
        out[..., i0] = a * c - b * s
        out[..., i1] = a * s + b * c
        return out

    def _act(self, a):
        if self.act == "silu":
            return a / (1 + np.exp(-a))
        if self.act == "gelu":  # tanh approximation
            return 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))
        if self.act == "relu2":
            return np.maximum(a, 0) ** 2
        raise ValueError(self.act)

    def _proj(self, x, name):
        """x @ W.T, then the optional per-tensor scale and bias."""
        y = x @ self.w[name + ".weight"].T
        if name + ".scale" in self.w:
            y = y * self.w[name + ".scale"].reshape(())
        if name + ".bias" in self.w:
            y = y + self.w[name + ".bias"]
        return y

    def forward(self, tokens, act_quant=None):
        """Logits for every position of `tokens` (from an empty cache).

        act_quant: optional function applied to every matmul input (to emulate the runtime's
        int8 activation quantization); None = exact float math.
        """
        q8 = act_quant or (lambda v: v)
        n = len(tokens)
        x = self.w["token_embd.weight"][np.asarray(tokens)]
        if self.arch == "gemma3":
            x = x * math.sqrt(self.d)
        pos = np.arange(n)
        g = self.n_head // self.n_kv
        for i in range(self.n_layer):
            b = f"blk.{i}."
            W = lambda name: self.w[b + name + ".weight"]  # noqa: E731
            h = q8(self._rms(x, W("attn_norm")))
            q = self._proj(h, b + "attn_q").reshape(n, self.n_head, self.hd)
            k = self._proj(h, b + "attn_k").reshape(n, self.n_kv, self.hd)
            v = self._proj(h, b + "attn_v").reshape(n, self.n_kv, self.hd)
            if self.arch == "gemma3":
                q, k = self._rms(q, W("attn_q_norm")), self._rms(k, W("attn_k_norm"))
            q, k = self._rope(q, pos, self.layer_base[i]), self._rope(k, pos, self.layer_base[i])
            dist = pos[:, None] - pos[None, :]
            allowed = dist >= 0
            if self.window[i]:
                allowed &= dist < self.window[i]
            mask = np.where(allowed, 0.0, -np.inf)
            out = np.empty_like(q)
            for hh in range(self.n_head):
                kv = hh // g
                s = q[:, hh] @ k[:, kv].T / np.sqrt(self.hd) + mask
                s = np.exp(s - s.max(axis=1, keepdims=True))
                s /= s.sum(axis=1, keepdims=True)
                out[:, hh] = s @ v[:, kv]
            out = out.reshape(n, -1)
            if self.arch == "bitnet":
                out = self._rms(out, W("attn_sub_norm"))
            o = self._proj(q8(out), b + "attn_output")
            if self.arch == "gemma3":
                o = self._rms(o, W("post_attention_norm"))
            x = x + o
            h = q8(self._rms(x, W("ffn_norm")))
            a = self._act(self._proj(h, b + "ffn_gate")) * self._proj(h, b + "ffn_up")
            if self.arch == "bitnet":
                a = self._rms(a, W("ffn_sub_norm"))
            o = self._proj(q8(a), b + "ffn_down")
            if self.arch == "gemma3":
                o = self._rms(o, W("post_ffw_norm"))
            x = x + o
        x = q8(self._rms(x, self.w["output_norm.weight"]))
        return x @ self.w["output.weight"].T


def log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_kl(ref, other):
    """Mean over rows of KL(softmax(ref) || softmax(other)), in nats."""
    p, q = log_softmax(ref), log_softmax(other)
    return float((np.exp(p) * (p - q)).sum(axis=1).mean())


def rel_error(a, b):
    """||a - b|| / ||b||."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


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
