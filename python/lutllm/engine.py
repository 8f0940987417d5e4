"""The high-level engine: one loaded model + one KV-cache context, with prefix reuse, token
generation and perplexity. The CLI and the Python API build on it; it holds no UI code.

Every forward pass is one call into the C++ runtime (GIL released); Python only samples.
"""
from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .arch import model_config
from .gguf_file import GGUFFile
from .memory import MemoryFitWarning, available_memory, estimate_memory, fit_advice
from .models import resolve_model
from .sampler import Sampler, SamplerParams
from .tokenizer import Tokenizer

DEFAULT_N_CTX = 4096


class ContextOverflowError(ValueError):
    """A prompt (plus what must be generated) does not fit in the context window."""


@dataclass
class Timings:
    """Token counts and wall time of the last prompt evaluation and generation."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    reused_tokens: int = 0

    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0


@dataclass
class GenerationResult:
    tokens: list[int] = field(default_factory=list)
    finish_reason: str = "length"  # "stop" (end-of-generation token) or "length"


def default_threads() -> int:
    from . import _core

    return int(_core.physical_cores())


class Engine:
    """A model file mapped once, a tokenizer, and one sequence's KV cache."""

    def __init__(
        self,
        model: str | Path,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_batch: int = 512,
        verbose: bool = False,
        lut: bool = True,
        progress: Callable[[int, int], None] | None = None,
        memory_warning: Callable[[str], None] | None = None,
        mem_budget: int | None = None,
        flash_mode: str | None = None,
        flash_io: str | None = None,
        flash_window: int = 4,
        full_window_kv: bool = False,
    ):
        """lut: run <= 4-bit weights (Q4_0, Q4_1, Q4_K, Q3_K, Q2_K, TQ1_0, TQ2_0) through the table-lookup
        kernels (repacked once at load, exactly); False keeps every weight mapped and uses the
        int8-activation dot-product kernels. Weights packed by `lutllm quantize` always run from the
        mapping through the table-lookup kernels.
        progress(done, total): called after each layer is bound (for a loading bar).
        memory_warning(message): called before loading when the estimated memory need (see
        memory.py; kept in `memory_estimate`) exceeds what is available; the default issues a
        MemoryFitWarning. Loading goes on either way: mapped weights can page.
        mem_budget: bytes of DRAM for weights, caches and staging (None: no limit). A flash file
        (`lutllm convert --flash`) keeps its FFN resident when it fits and streams it otherwise;
        flash_mode forces "resident", "dense" (streamed) or "windowed" (sparse: the gate predictor, or
        without one the gate, resident; active bundles cached for flash_window tokens; thresholds
        from flash_set_thresholds), flash_io an I/O backend (auto, uring, pool, buffered). See
        convert.plan_memory.
        full_window_kv: keep every position's keys and values in sliding-window layers too (gemma3's
        local layers), as llama.cpp's swa_full does. By default those layers keep only recent
        positions (a fraction of the memory at long contexts), and rewinding the cache further back
        than their window re-evaluates the prompt from the start."""
        from . import _core

        path = resolve_model(str(model))
        self.path = Path(path)
        self.gguf = GGUFFile(path)
        meta = self.gguf.metadata
        from .convert import FlashLayout, flash_shape_view, plan_memory  # flash-backed weights

        self.flash_layout = FlashLayout.from_gguf(self.gguf)
        tensors = self.gguf.tensors if self.flash_layout is None else flash_shape_view(self.gguf.tensors, self.flash_layout)
        self.config = model_config(meta, tensors, str(path))
        self.tokenizer = Tokenizer.from_metadata(meta)
        if self.tokenizer.n_vocab != self.config.n_vocab:
            raise ValueError(
                f"{path}: tokenizer has {self.tokenizer.n_vocab} tokens but the model has {self.config.n_vocab}"
            )
        if n_threads is not None and n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        if n_ctx is None or n_ctx == 0:
            n_ctx = min(self.config.n_ctx_train, DEFAULT_N_CTX)
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        if n_batch < 1:
            raise ValueError(f"n_batch must be >= 1, got {n_batch}")
        self.memory_estimate = estimate_memory(self.gguf, self.config, n_ctx, n_batch, lut=lut,
                                               n_threads=n_threads or default_threads(),
                                               full_window_kv=full_window_kv)
        # with a budget, plan_memory below decides what stays resident; without one, warn when the
        # whole model will not fit in what the machine has
        advice = None if mem_budget else fit_advice(self.memory_estimate, available_memory())
        if advice:
            if memory_warning is None:
                warnings.warn(advice, MemoryFitWarning, stacklevel=2)
            else:
                memory_warning(advice)

        descs = self.gguf.runtime_descs()  # packed LUT tensors carry their layout
        cfg = dict(self.config.as_dict(), use_lut=bool(lut))
        self.memory_plan = plan_memory(self.flash_layout, self.memory_estimate, mem_budget, flash_mode)
        if self.flash_layout is not None:
            if not lut:
                raise ValueError(f"{path}: a flash file runs its FFN with the table-lookup kernels (lut=True)")
            cfg["flash"] = dict(self.flash_layout.config(), path=str(path), mode=self.memory_plan.mode,
                                io=flash_io or "auto", n_layer=self.flash_layout.n_layer,
                                d_model=self.flash_layout.d_model, d_ff=self.flash_layout.d_ff,
                                window=int(flash_window), slab_bundles=self.memory_plan.slab_bundles,
                                resident_bundles=self.memory_plan.resident_bundles)
        self.mem_budget = mem_budget
        self._model = _core.Model(str(path), cfg, descs, n_threads or 0, progress=progress)
        self._ctx = _core.Context(self._model, n_ctx, n_batch, full_window_kv=bool(full_window_kv))
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        self.lut = bool(lut)
        self.verbose = verbose
        self._cached: list[int] = []  # tokens whose keys/values are in the cache, in order
        self.timings = Timings()
        self._chat_template = None
        self.last_reused = 0  # tokens the last eval() took from the cache
        self.last_logits: np.ndarray | None = None  # logits of the last token eval() computed
        self._cancel_event = threading.Event()

    # ---- basic facts -------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    def flash_info(self) -> dict | None:
        """Flash FFN mode, I/O backend, memory and counters (bytes read, I/O wait), or None."""
        from . import _core

        return _core.model_flash_info(self._model)

    def flash_set_thresholds(self, thresholds) -> None:
        """Windowed mode: per-layer thresholds on max |silu(gate)| of a bundle ([] = all active)."""
        from . import _core

        _core.model_flash_set_thresholds(self._model, [float(t) for t in thresholds])

    def flash_reset_stats(self) -> None:
        from . import _core

        _core.model_flash_reset_stats(self._model)

    @property
    def n_threads(self) -> int:
        return int(self._model.n_threads)

    @property
    def has_chat_template(self) -> bool:
        return "tokenizer.chat_template" in self.gguf.metadata

    def chat_template(self):
        """The model's chat template (ChatML when the GGUF has none), compiled once."""
        if self._chat_template is None:
            from .chat_template import ChatTemplate

            self._chat_template = ChatTemplate.from_metadata(self.gguf.metadata)
        return self._chat_template

    def chat_tokens(self, messages) -> list[int]:
        """Prompt token ids for a chat conversation (see chat_template.chat_prompt_tokens)."""
        from .chat_template import chat_prompt_tokens

        return chat_prompt_tokens(self.chat_template(), self.tokenizer, messages)

    def reset(self) -> None:
        """Forget the cached sequence (the next eval starts from position 0)."""
        self._cached = []

    # ---- evaluation --------------------------------------------------------------------------
    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Make the cache hold exactly `tokens` and return logits of the last (or every new) token.

        Reuses the longest cached prefix: only the tokens after it are computed. With all_logits
        the result has one row per newly evaluated token (the reused prefix has none).
        """
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise ValueError("eval needs at least one token")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(
                f"{len(tokens)} tokens do not fit in the context of {self.n_ctx} tokens (raise --ctx-size / n_ctx)"
            )
        keep = 0
        limit = min(len(self._cached), len(tokens) - 1)  # always compute at least the last token
        while keep < limit and self._cached[keep] == tokens[keep]:
            keep += 1
        if keep < self._ctx.resume_floor:  # sliding-window layers dropped what resuming there needs
            keep = 0
        new = np.asarray(tokens[keep:], dtype=np.int32)
        self._cached = self._cached[:keep]
        logits = self._ctx.eval(new, keep, all_logits)
        self._cached = tokens
        self.last_reused = keep
        self.last_logits = logits[-1]
        return logits

    def cancel(self) -> None:
        """Stop the running generate() (from any thread) within one token: an evaluation in
        flight is interrupted and the generation ends with finish_reason "stop"."""
        self._cancel_event.set()
        self._ctx.request_cancel()

    def _eval_unless_cancelled(self, tokens):
        """Logits of the last token, or None when cancel() interrupted the evaluation (a
        KeyboardInterrupt that cancel() did not cause propagates)."""
        try:
            return self.eval(tokens)[-1]
        except KeyboardInterrupt:
            if not self._cancel_event.is_set():
                raise
            return None

    def generate(
        self,
        prompt: Sequence[int],
        params: SamplerParams | None = None,
        max_tokens: int | None = 128,
        stop_at_eog: bool = True,
        result: GenerationResult | None = None,
        logits_hook: Callable[[list[int], np.ndarray], np.ndarray] | None = None,
        *,
        sampler: Sampler | None = None,
        stopping_criteria: Callable[[np.ndarray, np.ndarray], bool] | None = None,
        past_full: bool = False,
    ) -> Iterator[int]:
        """Yield sampled tokens after `prompt` until an end-of-generation token, max_tokens, a full
        context, stopping_criteria(ids, logits) returning True, or cancel(). This is the only
        token loop of lutllm: the CLI and lutllm.Llama both consume it.

        max_tokens None or < 0 means until the context is full. `sampler` (default: one built from
        `params`) picks each token from the raw logits of the last evaluated token; while a token
        is being yielded, `last_logits` holds the logits it was sampled from and `_cached` the
        tokens before it. `past_full` also yields the one token sampled once the context is full
        (it is never evaluated), as llama-cpp-python's generate does. `result` (if given) receives
        the tokens and the finish reason ("stop": end of generation, stopping criteria or cancel;
        "length": token limit or full context). Ctrl-C (KeyboardInterrupt) passes through unless
        cancel() caused it.
        """
        sampler = sampler if sampler is not None else Sampler(params or SamplerParams())
        result = result if result is not None else GenerationResult()
        history = [int(t) for t in prompt]
        self._cancel_event.clear()
        self.timings = Timings()
        t0 = time.perf_counter()
        logits = self._eval_unless_cancelled(history)
        if logits is None:
            result.finish_reason = "stop"
            return
        t1 = time.perf_counter()
        self.timings = Timings(len(history) - self.last_reused, t1 - t0, 0, 0.0, self.last_reused)
        room = self.n_ctx - len(history) + (1 if past_full else 0)
        limit = room if max_tokens is None or max_tokens < 0 else min(max_tokens, room)
        eog = self.tokenizer.eog_ids
        gen_start = time.perf_counter()
        try:
            while len(result.tokens) < limit:
                if self._cancel_event.is_set():
                    result.finish_reason = "stop"
                    return
                if stopping_criteria is not None and stopping_criteria(np.asarray(history, dtype=np.intc), logits):
                    result.finish_reason = "stop"
                    return
                if logits_hook is not None:
                    logits = logits_hook(history, logits)
                tok = sampler.sample(logits, np.asarray(history, dtype=np.intc))
                if stop_at_eog and tok in eog:
                    result.finish_reason = "stop"
                    return
                result.tokens.append(tok)
                history.append(tok)
                yield tok
                if len(result.tokens) >= limit:  # also where the context is full (limit <= room)
                    break
                logits = self._eval_unless_cancelled(history)
                if logits is None:
                    result.finish_reason = "stop"
                    return
            result.finish_reason = "length"
        finally:
            self.timings.generated_tokens = len(result.tokens)
            self.timings.generate_seconds = time.perf_counter() - gen_start

    # ---- perplexity (llama.cpp's llama-perplexity method) ------------------------------------
    def perplexity(self, text: str, n_ctx: int, progress: Callable[[int, int, float], None] | None = None):
        """Return (ppl, n_chunks, nll_per_chunk) over non-overlapping chunks of n_ctx tokens.

        As llama-perplexity: tokenize once (with BOS when the model adds one), drop a partial last
        chunk, replace each chunk's first token with BOS when the model adds BOS, evaluate each chunk
        from an empty cache, and score tokens n/2+1 .. n-1 from the logits at n/2 .. n-2.
        """
        tokens = self.tokenizer.encode(text, add_special=True, parse_special=False)
        return self.perplexity_tokens(tokens, n_ctx, progress)

    def perplexity_tokens(self, tokens, n_ctx: int, progress: Callable[[int, int, float], None] | None = None):
        """perplexity() over already tokenized text."""
        if n_ctx < 4:
            raise ValueError(f"perplexity needs a context of at least 4 tokens, got {n_ctx}")
        if n_ctx > self.n_ctx:
            raise ContextOverflowError(f"perplexity context {n_ctx} exceeds the engine context {self.n_ctx}")
        tok = self.tokenizer
        n_chunks = len(tokens) // n_ctx
        if n_chunks == 0:
            raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}")
        first = n_ctx // 2
        total_nll, total_count, per_chunk = 0.0, 0, []
        for i in range(n_chunks):
            chunk = list(tokens[i * n_ctx : (i + 1) * n_ctx])
            if tok.add_bos:
                chunk[0] = tok.bos_id
            self.reset()
            logits = self.eval(chunk, all_logits=True).astype(np.float64)
            rows = logits[first : n_ctx - 1]
            targets = np.asarray(chunk[first + 1 : n_ctx])
            mx = rows.max(axis=1)
            lse = mx + np.log(np.exp(rows - mx[:, None]).sum(axis=1))
            nll = lse - rows[np.arange(len(targets)), targets]
            total_nll += float(nll.sum())
            total_count += len(targets)
            per_chunk.append(float(nll.mean()))
            if progress:
                progress(i + 1, n_chunks, math.exp(total_nll / total_count))
        self.reset()
        return math.exp(total_nll / total_count), n_chunks, per_chunk
