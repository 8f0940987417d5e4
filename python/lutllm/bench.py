"""Speed measurement shared by `lutllm bench` and bench/e2e.py: fixed benchmark token ids, timed
prefill and decode over an Engine, and the llama-bench-like report (markdown table or JSON lines).

It measures and formats; it asserts nothing about speed (no timed checks belong in tests).
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

NORMAL_TOKEN = 1  # tokenizer.ggml.token_type of ordinary text tokens (not control/byte/unused)


def bench_token_ids(metadata: dict, n: int, seed: int = 0, stream: int = 0) -> list[int]:
    """n deterministic pseudo-random token ids of ordinary text tokens (never BOS/EOS or other
    special tokens), the same for every runtime given the same GGUF: ids of type NORMAL_TOKEN when
    the file lists token types, else ids >= 100. `stream` selects an independent sequence (0 for
    the prompt, 1 for decode tokens)."""
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError("the model has no tokenizer.ggml.tokens: cannot choose benchmark token ids")
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None and len(types) == len(tokens):
        pool = np.flatnonzero(np.asarray(types) == NORMAL_TOKEN)
    else:
        pool = np.arange(min(100, len(tokens) - 1), len(tokens))
    if len(pool) == 0:
        raise ValueError("the model has no ordinary text tokens to benchmark with")
    rng = np.random.default_rng([seed, stream])
    return [int(x) for x in pool[rng.integers(0, len(pool), n)]]


def time_prefill(engine, prompt: Sequence[int]) -> float:
    """Seconds to evaluate `prompt` from an empty cache (one eval call, batches of n_batch)."""
    engine.reset()
    t0 = time.perf_counter()
    engine.eval(prompt)
    return time.perf_counter() - t0


def time_decode(engine, tokens: Sequence[int], prefix: Sequence[int] = ()) -> float:
    """Seconds to evaluate `tokens` one at a time after `prefix` (which must already be cached,
    e.g. by time_prefill; an empty prefix starts from an empty cache)."""
    hist = list(prefix)
    if not hist:
        engine.reset()
    t0 = time.perf_counter()
    for tok in tokens:
        hist.append(int(tok))
        engine.eval(hist)
    return time.perf_counter() - t0


@dataclass
class TestResult:
    """One test (pp or tg) of `lutllm bench`: seconds per repetition and the derived tokens/s."""

    name: str  # "pp256", "tg64"
    n_prompt: int
    n_gen: int
    samples_s: list[float] = field(default_factory=list)

    @property
    def n_tokens(self) -> int:
        return self.n_prompt + self.n_gen

    @property
    def samples_ts(self) -> list[float]:
        return [self.n_tokens / s for s in self.samples_s]

    @property
    def mean_ts(self) -> float:
        return statistics.fmean(self.samples_ts)

    @property
    def std_ts(self) -> float:
        ts = self.samples_ts
        return statistics.stdev(ts) if len(ts) > 1 else 0.0


def run_tests(engine, n_prompt: int, n_gen: int, reps: int, warmup: bool = True, seed: int = 0) -> list[TestResult]:
    """llama-bench's pp and tg tests: pp = prefill of n_prompt tokens into an empty cache; tg =
    n_gen tokens evaluated one at a time from an empty cache. Each repeated `reps` times after one
    untimed warm-up run; 0 tokens skips a test."""
    meta = engine.gguf.metadata
    out = []
    if n_prompt > 0:
        prompt = bench_token_ids(meta, n_prompt, seed, 0)
        r = TestResult(f"pp{n_prompt}", n_prompt, 0)
        if warmup:
            time_prefill(engine, prompt)
        r.samples_s = [time_prefill(engine, prompt) for _ in range(reps)]
        out.append(r)
    if n_gen > 0:
        gen = bench_token_ids(meta, n_gen, seed, 1)
        r = TestResult(f"tg{n_gen}", 0, n_gen)
        if warmup:
            time_decode(engine, gen)
        r.samples_s = [time_decode(engine, gen) for _ in range(reps)]
        out.append(r)
    engine.reset()
    return out


def _human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)


def model_facts(engine) -> dict:
    """What the report says about the model and the run (shared by the table and the JSON)."""
    from . import __version__, _core

    g = engine.gguf
    mix: dict[str, int] = {}
    for t in g.tensors.values():
        mix[t.type_name] = mix.get(t.type_name, 0) + 1
    n_params = sum(t.n_elements for t in g.tensors.values())
    main_type = max(mix, key=lambda k: sum(t.nbytes for t in g.tensors.values() if t.type_name == k))
    label = g.metadata.get("general.size_label")
    if not isinstance(label, str) or not label:
        label = _human_count(n_params).replace(" ", "").replace(".00", "")
    return {
        "model": str(engine.path),
        "model_type": f"{g.architecture or '?'} {label} {main_type}",
        "model_size": int(g.file_size),
        "n_params": int(n_params),
        "type_mix": dict(sorted(mix.items(), key=lambda kv: -kv[1])),
        "isa": str(_core.active_isa()),
        "weights": "lut" if engine.lut else "int8",
        "threads": int(engine.n_threads),
        "n_batch": int(engine.n_batch),
        "n_ctx": int(engine.n_ctx),
        "lutllm_version": __version__,
    }


def json_record(facts: dict, r: TestResult, reps: int) -> dict:
    return dict(facts, test=r.name, n_prompt=r.n_prompt, n_gen=r.n_gen, reps=reps,
                samples_s=[round(s, 9) for s in r.samples_s], samples_ts=[round(x, 4) for x in r.samples_ts],
                mean_ts=round(r.mean_ts, 4), std_ts=round(r.std_ts, 4))


TABLE_HEADER = ("| model | size | params | backend | threads | test | t/s |\n"
                "| --- | ---: | ---: | --- | ---: | ---: | ---: |")


def table_row(facts: dict, r: TestResult) -> str:
    size = f"{facts['model_size'] / 2**20:.2f} MiB"
    backend = f"CPU {facts['isa']} {facts['weights']}"
    ts = f"{r.mean_ts:.2f} ± {r.std_ts:.2f}" if math.isfinite(r.std_ts) else f"{r.mean_ts:.2f}"
    return (f"| {facts['model_type']} | {size} | {_human_count(facts['n_params'])} | {backend} | "
            f"{facts['threads']} | {r.name} | {ts} |")
