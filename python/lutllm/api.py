"""`lutllm.Llama`: a drop-in subset of llama-cpp-python's `Llama` class (completion, chat, streaming,
tokenize, state save/load) over the Engine. It is not an HTTP server (see server.py) and has no GPU.
"""
from __future__ import annotations

import codecs
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .sampler import Sampler, SamplerParams

__all__ = ["Llama", "LlamaState", "LogitsProcessorList", "StoppingCriteriaList"]

# kwargs llama-cpp-python accepts that change nothing here at their default values
_IGNORED_KWARGS = {
    "use_mlock": False, "embedding": False, "offload_kqv": True, "flash_attn": False,
    "main_gpu": 0, "tensor_split": None, "split_mode": None, "rpc_servers": None,
    "rope_scaling_type": None, "pooling_type": None, "rope_freq_base": 0.0, "rope_freq_scale": 0.0,
    "yarn_ext_factor": -1.0, "yarn_attn_factor": 1.0, "yarn_beta_fast": 32.0, "yarn_beta_slow": 1.0,
    "yarn_orig_ctx": 0, "logits_all": False, "last_n_tokens_size": 64, "numa": False,
    "chat_handler": None, "draft_model": None, "tokenizer": None, "type_k": None, "type_v": None,
    "spm_infill": False, "kv_overrides": None, "lora_base": None, "lora_scale": 1.0,
    "n_ubatch": 512, "n_seq_max": 1, "no_perf": False, "check_tensors": False,
}


class LogitsProcessorList(list):
    """Callables (input_ids: np.intc array, scores: np.float32 array) -> scores, applied in order."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        for p in self:
            scores = p(input_ids, scores)
        return scores


class StoppingCriteriaList(list):
    """Callables (input_ids, logits) -> bool; generation stops when any returns True."""

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> bool:
        return any(p(input_ids, logits) for p in self)


@dataclass
class LlamaState:
    """A snapshot of the evaluated tokens, their K/V cache rows and the last logits."""

    input_ids: list[int]
    kv: np.ndarray  # flat float32, see Context.save_kv
    scores: np.ndarray | None  # logits after the last token (n_vocab,) or None
    n_vocab: int
    n_ctx: int

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def llama_state_size(self) -> int:
        return int(self.kv.nbytes)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class _Cancelled(Exception):
    pass


class Llama:
    """A GGUF model loaded for CPU inference, with llama-cpp-python's calling conventions.

    Supported: create_completion / __call__, create_chat_completion (stream or not), tokenize,
    detokenize, generate, eval, reset, save_state / load_state, n_ctx, n_vocab, token_bos,
    token_eos, metadata, logits processors, stopping criteria, stop strings, logprobs, cancel().

    Defaults and behaviour that differ from llama-cpp-python:
      * n_ctx: None or 0 means min(model training context, 4096) (llama-cpp-python: 512, 0 = model's).
      * verbose: False (llama-cpp-python: True); True prints one load line to stderr.
      * seed: None or -1 draws a random seed; a per-call seed reseeds only that call.
      * use_mmap: weights are always memory-mapped; use_mmap=False is accepted and ignored.
      * n_threads_batch: stored; one thread pool of n_threads serves prompt and generation.
      * mem_budget: bytes of DRAM for weights, caches and staging. A flash file (`lutllm convert
        --flash`) streams its FFN weights from storage when they do not fit; a budget below the
        minimum (or an ordinary GGUF that does not fit) raises ValueError naming the minimum.
      * swa_full: as llama-cpp-python; by default sliding-window layers (gemma3's local ones) keep
        only recent keys and values, and reusing a cached prefix that ends further back than their
        window re-evaluates from the start; swa_full=True keeps every position.
      * progress(done, total) (lutllm only): called after each layer is bound while loading.
      * memory_warning(message) (lutllm only): called instead of a MemoryFitWarning when the estimated
        memory need exceeds what is available (see lutllm.memory); loading goes on either way.
      * GPU offload (n_gpu_layers > 0), LoRA (lora_path), grammars and JSON response formats are
        not supported and raise ValueError naming the argument.
      * Chat prompts use the model's own template (`chat_format` may name another template in
        the GGUF, or "chatml"); there is no tool-call parsing.
      * echo=True with logprobs is not supported (ValueError).
      * cancel() from another thread stops the running generation within one token; the result
        ends with finish_reason "stop". `token_callback(token_id)` returning False also stops.
      * Calls are serialised by a per-instance lock; a stream holds it until it is exhausted or
        closed, so finish or close() streams you abandon before using the instance from another
        thread.
      * save_state() returns a LlamaState (tokens, K/V rows, last logits) that pickles; it is not
        llama.cpp's byte format.
    """

    def __init__(
        self,
        model_path: str,
        *,
        n_gpu_layers: int = 0,
        seed: int | None = None,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        use_mmap: bool = True,
        vocab_only: bool = False,
        chat_format: str | None = None,
        verbose: bool = False,
        mem_budget: int | None = None,
        lora_path: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        memory_warning: Callable[[str], None] | None = None,
        swa_full: bool | None = None,
        **kwargs: Any,
    ):
        if n_gpu_layers is not None and n_gpu_layers != 0:
            raise ValueError(f"n_gpu_layers={n_gpu_layers}: lutllm runs on the CPU only (use 0)")
        if lora_path is not None:
            raise ValueError("lora_path: LoRA adapters are not supported by lutllm")
        for k, v in kwargs.items():
            if k not in _IGNORED_KWARGS:
                raise TypeError(f"Llama() got an unexpected keyword argument {k!r}")
            if v != _IGNORED_KWARGS[k] and v is not None:
                raise ValueError(f"{k}={v!r} is not supported by lutllm (only the default)")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        if mem_budget is not None and (not isinstance(mem_budget, int) or mem_budget < 0):
            raise ValueError(f"mem_budget must be a non-negative integer of bytes, got {mem_budget!r}")
        self.model_path = str(model_path)
        self.verbose = verbose
        self.mem_budget = mem_budget
        self.use_mmap = use_mmap
        self.n_threads_batch = n_threads_batch
        self.chat_format = chat_format
        self.vocab_only = vocab_only
        self._seed = None if seed is None or seed < 0 else seed
        self._rng = np.random.default_rng(self._seed)
        self._lock = threading.RLock()
        self._engine = None
        if vocab_only:
            from .gguf_file import GGUFFile
            from .models import resolve_model
            from .tokenizer import Tokenizer

            self._gguf = GGUFFile(resolve_model(self.model_path))
            self._tokenizer = Tokenizer.from_metadata(self._gguf.metadata)
            self._n_ctx = 0
        else:
            from .engine import Engine

            self._engine = Engine(self.model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                                  verbose=verbose, progress=progress, memory_warning=memory_warning,
                                  mem_budget=mem_budget, full_window_kv=bool(swa_full))
            self._gguf = self._engine.gguf
            self._tokenizer = self._engine.tokenizer
            self._n_ctx = self._engine.n_ctx
        self.n_batch = n_batch
        self.n_threads = self._engine.n_threads if self._engine else (n_threads or 0)
        self._input_ids: list[int] = []  # tokens evaluated by eval()/generate(), llama-cpp style
        self._scores: np.ndarray | None = None  # logits after the last evaluated token
        self._template = None
        self.metadata: dict[str, str] = {
            k: str(v) for k, v in self._gguf.metadata.items() if isinstance(v, (str, int, float, bool))
        }
        if verbose:
            import sys

            print(f"lutllm: loaded {self.model_path} (n_ctx={self._n_ctx}, threads={self.n_threads})",
                  file=sys.stderr)

    # ---- facts -------------------------------------------------------------------------------
    def n_ctx(self) -> int:
        return self._n_ctx

    def n_vocab(self) -> int:
        return self._tokenizer.n_vocab

    def n_embd(self) -> int:
        return self._need_model().config.d_model

    def close(self) -> None:
        """Release the model and its KV cache (the object is unusable afterwards)."""
        with self._lock:
            self._engine = None
            self._scores = None

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def token_bos(self) -> int:
        return -1 if self._tokenizer.bos_id is None else self._tokenizer.bos_id

    def token_eos(self) -> int:
        return -1 if self._tokenizer.eos_id is None else self._tokenizer.eos_id

    @property
    def n_tokens(self) -> int:
        return len(self._input_ids)

    @property
    def input_ids(self) -> np.ndarray:
        return np.asarray(self._input_ids, dtype=np.intc)

    @property
    def tokenizer_(self):
        return self._tokenizer

    def _need_model(self):
        if self._engine is None:
            if self.vocab_only:
                raise RuntimeError("this Llama was loaded with vocab_only=True: it can only tokenize")
            raise RuntimeError("this Llama was closed")
        return self._engine

    # ---- tokens ------------------------------------------------------------------------------
    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        """UTF-8 bytes -> token ids (BOS first when add_bos and the model uses one)."""
        if isinstance(text, str):
            raise TypeError("tokenize() takes bytes (as llama-cpp-python); use text.encode('utf-8')")
        if not isinstance(text, (bytes, bytearray, memoryview)):
            raise TypeError(f"tokenize() takes bytes, got {type(text).__name__}")
        try:
            s = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"tokenize(): text is not valid UTF-8 ({e})") from None
        toks = self._tokenizer.encode(s, add_special=False, parse_special=special)
        if add_bos and self._tokenizer.add_bos and self._tokenizer.bos_id is not None:
            toks.insert(0, self._tokenizer.bos_id)
        return toks

    def detokenize(self, tokens: Sequence[int], prev_tokens: Sequence[int] | None = None,
                   special: bool = False) -> bytes:
        """Token ids -> the bytes they render to (control tokens only when special)."""
        return self._tokenizer.decode_bytes(list(tokens), special=special)

    # ---- low level: eval / sample / generate -------------------------------------------------
    def reset(self) -> None:
        """Forget the evaluated tokens; the KV cache stays for prefix reuse by the next eval."""
        self._input_ids = []
        self._scores = None

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate `tokens` after those already evaluated (since the last reset)."""
        eng = self._need_model()
        with self._lock:
            history = self._input_ids + [int(t) for t in tokens]
            self._scores = np.asarray(eng.eval(history)[-1])
            self._input_ids = history

    @property
    def scores(self) -> np.ndarray | None:
        return self._scores

    def _sampler(self, temp, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty,
                 presence_penalty, seed, logits_processor) -> Sampler:
        if seed is None or (isinstance(seed, int) and seed < 0):
            seed = int(self._rng.integers(0, 2**63 - 1))
        params = SamplerParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, typical_p=typical_p,
                               repeat_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                               presence_penalty=presence_penalty, seed=seed)
        return Sampler(params, list(logits_processor or []))

    def generate(self, tokens: Sequence[int], top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 typical_p: float = 1.0, temp: float = 0.80, repeat_penalty: float = 1.0, reset: bool = True,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, seed: int | None = None,
                 logits_processor=None, stopping_criteria=None, grammar=None) -> Iterator[int]:
        """Yield sampled tokens after `tokens` forever (end-of-generation tokens included, as
        llama-cpp-python does) until the context is full or stopping_criteria says stop."""
        if grammar is not None:
            raise ValueError("grammar: grammars are not supported by lutllm")
        self._need_model()
        sampler = self._sampler(temp, top_k, top_p, min_p, typical_p, repeat_penalty, frequency_penalty,
                                presence_penalty, seed, logits_processor)
        if isinstance(stopping_criteria, (list, tuple)) and not isinstance(stopping_criteria, StoppingCriteriaList):
            stopping_criteria = StoppingCriteriaList(stopping_criteria)
        if reset:
            self.reset()
        eng = self._need_model()
        prompt = self._input_ids + [int(t) for t in tokens]
        gen = eng.generate(prompt, max_tokens=None, stop_at_eog=False, sampler=sampler,
                           stopping_criteria=stopping_criteria, past_full=True)
        try:
            while True:
                with self._lock:  # held per step, not while the caller has the token
                    try:
                        tok = next(gen)
                    except StopIteration:
                        return
                    self._sync()
                yield tok
        finally:
            with self._lock:
                gen.close()
                self._sync()

    def cancel(self) -> None:
        """Stop the running generation (any thread) within one token."""
        eng = self._engine
        if eng is not None:
            eng.cancel()

    def _sync(self) -> None:
        """Mirror the engine's evaluated tokens and last logits (llama-cpp's input_ids / scores)."""
        eng = self._engine
        if eng is not None:
            self._input_ids = list(eng._cached)
            self._scores = None if eng.last_logits is None else np.asarray(eng.last_logits)

    # ---- state -------------------------------------------------------------------------------
    def save_state(self) -> LlamaState:
        """Snapshot of the evaluated tokens and their KV cache (restorable with load_state)."""
        eng = self._need_model()
        with self._lock:
            ids = list(self._input_ids)
            if eng._cached[: len(ids)] != ids:  # the cache was reused by a completion since
                if ids:
                    self._scores = np.asarray(eng.eval(ids)[-1])
            kv = eng._ctx.save_kv(len(ids))
            scores = None if self._scores is None else self._scores.copy()
            return LlamaState(ids, kv, scores, self.n_vocab(), self._n_ctx)

    def load_state(self, state: LlamaState) -> None:
        eng = self._need_model()
        if not isinstance(state, LlamaState):
            raise TypeError(f"load_state() takes a LlamaState, got {type(state).__name__}")
        if state.n_vocab != self.n_vocab() or state.n_tokens > self._n_ctx:
            raise ValueError(f"state of {state.n_tokens} tokens / vocabulary {state.n_vocab} does not fit this "
                             f"model (n_ctx {self._n_ctx}, vocabulary {self.n_vocab()})")
        with self._lock:
            eng._cached = []
            eng._ctx.load_kv(state.n_tokens, np.ascontiguousarray(state.kv, dtype=np.float32))
            eng._cached = list(state.input_ids)
            self._input_ids = list(state.input_ids)
            self._scores = None if state.scores is None else state.scores.copy()

    # ---- completion core ---------------------------------------------------------------------
    def _prompt_tokens(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if prompt == "":
                return [self._tokenizer.bos_id] if self._tokenizer.bos_id is not None else []
            return self.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, (int, np.integer)) for t in prompt):
            n = self.n_vocab()
            for t in prompt:
                if not 0 <= int(t) < n:
                    raise ValueError(f"prompt token id {t} is outside the vocabulary (0..{n - 1})")
            return [int(t) for t in prompt]
        raise TypeError(f"prompt must be a str or a list of token ids, got {type(prompt).__name__}")

    def _run(self, prompt_tokens: list[int], max_tokens, stop, sampler: Sampler, n_logprobs,
             stopping_criteria, token_callback) -> Iterator[tuple]:
        """Yield (text, token_info_list, finish_reason or None) pieces, the last with a reason.

        Text is withheld while it could be the start of a stop string, and cut before one.
        token_info is (token_id, logprob, {token_text: logprob} top-n) or (token_id, None, None).
        """
        eng = self._need_model()
        n_ctx = self._n_ctx
        if not prompt_tokens:
            raise ValueError("the prompt is empty (and the model has no BOS token)")
        if len(prompt_tokens) > n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {n_ctx}")
        if max_tokens is None or max_tokens <= 0:
            limit = n_ctx - len(prompt_tokens)
        else:
            limit = min(int(max_tokens), n_ctx - len(prompt_tokens))
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        else:
            stops = [s for s in stop if s]
        stops = [s for s in stops if isinstance(s, str) and s]
        tok = self._tokenizer
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = ""
        emitted = 0
        pending: list[tuple] = []
        if isinstance(stopping_criteria, (list, tuple)) and not isinstance(stopping_criteria, StoppingCriteriaList):
            stopping_criteria = StoppingCriteriaList(stopping_criteria)

        def hold_back(s: str) -> int:
            """Length of the longest suffix of s that is a proper prefix of a stop string."""
            best = 0
            for st in stops:
                for k in range(min(len(st) - 1, len(s)), 0, -1):
                    if s.endswith(st[:k]):
                        best = max(best, k)
                        break
            return best

        from .engine import GenerationResult

        result = GenerationResult()
        gen = eng.generate(prompt_tokens, max_tokens=limit, sampler=sampler, stopping_criteria=stopping_criteria,
                           result=result)
        reason = None
        try:
            for t in gen:
                self._sync()
                if n_logprobs is not None:
                    lp = _log_softmax(eng.last_logits)
                    top = np.argpartition(lp, -n_logprobs)[-n_logprobs:] if n_logprobs > 0 else np.array([], int)
                    top = top[np.argsort(-lp[top], kind="stable")]
                    info = (t, float(lp[t]), {tok.decode([int(i)]): float(lp[i]) for i in top})
                else:
                    info = (t, None, None)
                pending.append(info)
                text += decoder.decode(tok.token_bytes(t))
                if token_callback is not None and token_callback(t) is False:
                    reason = "stop"
                    break
                # stop strings
                cut = None
                if stops:
                    start = max(0, emitted - max(len(s) for s in stops))
                    for s in stops:
                        i = text.find(s, start)
                        if i >= 0 and (cut is None or i < cut):
                            cut = i
                if cut is not None:
                    gen.close()
                    self._sync()
                    yield text[emitted:max(cut, emitted)], pending, "stop"
                    return
                safe = len(text) - hold_back(text[emitted:])
                if safe > emitted:
                    yield text[emitted:safe], pending, None
                    emitted, pending = safe, []
        finally:
            gen.close()
            self._sync()
        text += decoder.decode(b"", final=True)
        yield text[emitted:], pending, reason or result.finish_reason

    # ---- completion API ----------------------------------------------------------------------
    def create_completion(
        self, prompt, suffix: str | None = None, max_tokens: int | None = 16, temperature: float = 0.8,
        top_p: float = 0.95, min_p: float = 0.05, typical_p: float = 1.0, logprobs: int | None = None,
        echo: bool = False, stop=None, frequency_penalty: float = 0.0, presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0, top_k: int = 40, stream: bool = False, seed: int | None = None,
        tfs_z: float = 1.0, mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1,
        model: str | None = None, stopping_criteria=None, logits_processor=None, grammar=None,
        logit_bias: dict | None = None, token_callback: Callable[[int], Any] | None = None,
    ):
        """Complete `prompt` (str or token ids); a dict, or an iterator of chunk dicts when stream."""
        if suffix:
            raise ValueError("suffix: infill is not supported by lutllm")
        if grammar is not None:
            raise ValueError("grammar: grammars are not supported by lutllm")
        if mirostat_mode:
            raise ValueError("mirostat_mode: mirostat sampling is not supported by lutllm")
        if logprobs is not None and (not isinstance(logprobs, int) or isinstance(logprobs, bool) or logprobs < 0):
            raise ValueError(f"logprobs must be a non-negative integer, got {logprobs!r}")
        if echo and logprobs is not None:
            raise ValueError("echo=True together with logprobs is not supported by lutllm")
        self._need_model()
        procs = list(logits_processor or [])
        if logit_bias:
            procs.insert(0, _bias_processor(logit_bias, self.n_vocab()))
        prompt_tokens = self._prompt_tokens(prompt)
        if len(prompt_tokens) > self._n_ctx:
            raise ValueError(f"Requested tokens ({len(prompt_tokens)}) exceed context window of {self._n_ctx}")
        sampler = self._sampler(temperature, top_k, top_p, min_p, typical_p, repeat_penalty,
                                frequency_penalty, presence_penalty, seed, procs)
        if logprobs is not None:
            logprobs = min(logprobs, self.n_vocab())
        cid = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        model_name = model or self.model_path
        echo_text = self._tokenizer.decode(prompt_tokens) if echo else ""
        gen = self._locked(self._run(prompt_tokens, max_tokens, stop, sampler, logprobs, stopping_criteria,
                                     token_callback))
        if stream:
            return self._stream_completion(gen, cid, created, model_name, echo_text, logprobs is not None)
        parts, infos, reason = [], [], "length"
        for piece, info, r in gen:
            parts.append(piece)
            infos.extend(info)
            if r is not None:
                reason = r
        text = "".join(parts)
        n = len(infos)
        return {
            "id": cid, "object": "text_completion", "created": created, "model": model_name,
            "choices": [{
                "text": echo_text + text, "index": 0,
                "logprobs": _completion_logprobs(self._tokenizer, infos, len(echo_text)) if logprobs is not None
                else None,
                "finish_reason": reason,
            }],
            "usage": {"prompt_tokens": len(prompt_tokens), "completion_tokens": n,
                      "total_tokens": len(prompt_tokens) + n},
        }

    def _locked(self, gen):
        with self._lock:
            yield from gen

    def _stream_completion(self, gen, cid, created, model_name, echo_text, want_lp):
        offset = 0
        if echo_text:
            yield {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                   "choices": [{"text": echo_text, "index": 0, "logprobs": None, "finish_reason": None}]}
            offset = len(echo_text)
        for piece, info, reason in gen:
            if not piece and reason is None:
                continue
            lp = _completion_logprobs(self._tokenizer, info, offset) if want_lp else None
            offset += len(piece)
            yield {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                   "choices": [{"text": piece, "index": 0, "logprobs": lp, "finish_reason": reason}]}

    __call__ = create_completion

    # ---- chat --------------------------------------------------------------------------------
    def _chat_template(self):
        if self._template is None:
            from .chat_template import CHATML_TEMPLATE, ChatTemplate

            meta = self._gguf.metadata
            if self.chat_format in (None, "", "default"):
                self._template = ChatTemplate.from_metadata(meta)
            elif self.chat_format == "chatml":
                self._template = ChatTemplate(CHATML_TEMPLATE, name="chatml")
            else:
                self._template = ChatTemplate.from_metadata(meta, name=self.chat_format)
        return self._template

    def chat_prompt_tokens(self, messages, tools=None) -> list[int]:
        """The token ids a chat request is answered from (template rendered, BOS once)."""
        from .chat_template import chat_prompt_tokens

        return chat_prompt_tokens(self._chat_template(), self._tokenizer, messages, tools=tools)

    def create_chat_completion(
        self, messages: list[dict], functions=None, function_call=None, tools=None, tool_choice=None,
        temperature: float = 0.2, top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
        typical_p: float = 1.0, stream: bool = False, stop=None, seed: int | None = None,
        response_format=None, max_tokens: int | None = None, presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0, repeat_penalty: float = 1.0, tfs_z: float = 1.0,
        mirostat_mode: int = 0, mirostat_tau: float = 5.0, mirostat_eta: float = 0.1, model: str | None = None,
        logits_processor=None, grammar=None, logit_bias=None, logprobs: bool | None = None,
        top_logprobs: int | None = None, stopping_criteria=None, token_callback=None,
    ):
        """Answer a list of {"role", "content"} messages; a dict, or chunk dicts when stream."""
        if functions or function_call or tool_choice:
            raise ValueError("functions / tool_choice: function calling is not supported by lutllm")
        if response_format and response_format.get("type", "text") != "text":
            raise ValueError("response_format: only {'type': 'text'} is supported by lutllm")
        if top_logprobs is not None and (not isinstance(top_logprobs, int) or top_logprobs < 0):
            raise ValueError(f"top_logprobs must be a non-negative integer, got {top_logprobs!r}")
        prompt_tokens = self.chat_prompt_tokens(messages, tools=tools)
        n_lp = (top_logprobs or 0) if logprobs else None
        completion = self.create_completion(
            prompt_tokens, max_tokens=max_tokens, temperature=temperature, top_p=top_p, min_p=min_p,
            typical_p=typical_p, logprobs=n_lp, stop=stop, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty, repeat_penalty=repeat_penalty, top_k=top_k, stream=stream,
            seed=seed, model=model, stopping_criteria=stopping_criteria, logits_processor=logits_processor,
            grammar=grammar, logit_bias=logit_bias, mirostat_mode=mirostat_mode, token_callback=token_callback)
        cid = f"chatcmpl-{uuid.uuid4()}"
        if stream:
            return self._stream_chat(completion, cid)
        c = completion["choices"][0]
        return {
            "id": cid, "object": "chat.completion", "created": completion["created"], "model": completion["model"],
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": c["text"]},
                "logprobs": _chat_logprobs(c["logprobs"]) if logprobs else None,
                "finish_reason": c["finish_reason"],
            }],
            "usage": completion["usage"],
        }

    def _stream_chat(self, chunks, cid):
        first = True
        for ch in chunks:
            c = ch["choices"][0]
            base = {"id": cid, "object": "chat.completion.chunk", "created": ch["created"], "model": ch["model"]}
            if first:
                yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                            "finish_reason": None}]}
                first = False
            if c["text"]:
                yield {**base, "choices": [{"index": 0, "delta": {"content": c["text"]},
                                            "logprobs": _chat_logprobs(c["logprobs"]), "finish_reason": None}]}
            if c["finish_reason"] is not None:
                yield {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                            "finish_reason": c["finish_reason"]}]}


def _bias_processor(bias: dict, n_vocab: int):
    items = []
    for k, v in bias.items():
        t = int(k)
        if not 0 <= t < n_vocab:
            raise ValueError(f"logit_bias token id {k} is outside the vocabulary (0..{n_vocab - 1})")
        items.append((t, float(v)))
    idx = np.array([t for t, _ in items], dtype=np.int64)
    val = np.array([v for _, v in items], dtype=np.float32)

    def proc(input_ids, scores):
        scores = np.array(scores, dtype=np.float32, copy=True)
        scores[idx] += val
        return scores

    return proc


def _completion_logprobs(tok, infos, offset: int) -> dict:
    """OpenAI legacy completion logprobs: tokens, text_offset, token_logprobs, top_logprobs."""
    out = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
    for t, lp, top in infos:
        s = tok.decode([t])
        out["tokens"].append(s)
        out["text_offset"].append(offset)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append(top)
        offset += len(s)
    return out


def _chat_logprobs(lp: dict | None) -> dict | None:
    if lp is None:
        return None
    content = []
    for s, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        content.append({
            "token": s, "logprob": v, "bytes": list(s.encode("utf-8")),
            "top_logprobs": [{"token": k, "logprob": x, "bytes": list(k.encode("utf-8"))}
                             for k, x in (top or {}).items()],
        })
    return {"content": content}
