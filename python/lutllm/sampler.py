"""Token sampler over one logits vector (numpy), with llama.cpp's defaults and filter order.

Order: logits processors -> repetition penalties -> top-k -> typical-p -> top-p -> min-p ->
temperature -> seeded draw. Temperature <= 0 means greedy (argmax). This module does not run
the model and keeps no state except the random generator; the caller passes the token
history used for penalties.

No step sorts the whole vocabulary. Top-k uses `np.argpartition`. Top-p and typical-p need
"the shortest run of best tokens whose probability reaches p": up to 1024 candidates are
simply sorted; above that the best 256 are partitioned out and sorted, and if they fall
short a quickselect over the rest finds where the run ends (each round partitions the
undecided tokens around their middle and keeps the half holding the end), so the work stays
linear in the vocabulary. When top-k is off (0) this is what keeps top-p cheap, and when
min-p is also on it goes first: top-p and min-p both keep a prefix of the logit order, so
their result is the shorter prefix; min-p is one linear mask (usually leaving a few dozen
tokens) and top-p then searches only its survivors, with probabilities still normalised
over all candidates.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import numpy as np

__all__ = ["SamplerParams", "Sampler", "LogitsProcessor"]

#: (input_ids, logits) -> logits; called before the penalties, in list order.
LogitsProcessor = Callable[[np.ndarray, np.ndarray], np.ndarray]

_SMALL = 1024  # candidate counts up to this are simply sorted
_FIRST_RUN = 256  # first partial run tried by the prefix search


@dataclass(frozen=True)
class SamplerParams:
    """Sampling settings; the defaults are llama.cpp's.

    top_k, top_p, min_p and typical_p at 0 / 1.0 / 0.0 / 1.0 switch those filters off;
    repeat_penalty 1.0 with frequency and presence penalties 0.0 switches penalties off.
    repeat_last_n = -1 penalises over the whole history given, 0 over none.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_last_n: int = 64
    min_keep: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        def num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise ValueError(f"{name} must be a number, got {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v}")
            return v

        def integer(name: str, lo: int) -> int:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if v < lo:
                raise ValueError(f"{name} must be >= {lo}, got {v}")
            return int(v)

        num("temperature")
        integer("top_k", 0)
        if not 0.0 < num("top_p") <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= num("min_p") <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not 0.0 < num("typical_p") <= 1.0:
            raise ValueError(f"typical_p must be in (0, 1], got {self.typical_p}")
        if num("repeat_penalty") <= 0.0:
            raise ValueError(f"repeat_penalty must be > 0, got {self.repeat_penalty}")
        num("frequency_penalty")
        num("presence_penalty")
        integer("repeat_last_n", -1)
        integer("min_keep", 0)
        if self.seed is not None:
            integer("seed", 0)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalties_on(self) -> bool:
        return self.repeat_last_n != 0 and not (
            self.repeat_penalty == 1.0 and self.frequency_penalty == 0.0
            and self.presence_penalty == 0.0)


class Sampler:
    """Picks the next token from a logits vector.

    `sample(logits, input_ids)` returns a token id; `distribution(logits, input_ids)`
    returns the candidate ids and the probabilities the draw would use.
    """

    def __init__(self, params: SamplerParams | None = None,
                 logits_processors: Sequence[LogitsProcessor] = (), **overrides) -> None:
        params = params or SamplerParams()
        if overrides:
            names = {f.name for f in fields(SamplerParams)}
            bad = sorted(set(overrides) - names)
            if bad:
                raise ValueError(f"unknown sampler parameter(s): {', '.join(bad)}")
            params = replace(params, **overrides)
        self.params = params
        self.logits_processors: list[LogitsProcessor] = list(logits_processors)
        for i, p in enumerate(self.logits_processors):
            if not callable(p):
                raise ValueError(f"logits_processors[{i}] is not callable: {p!r}")
        self._rng = np.random.default_rng(params.seed)

    def reseed(self, seed: int | None) -> None:
        self._rng = np.random.default_rng(seed)

    # ---- public -----------------------------------------------------------------------

    def sample(self, logits: np.ndarray, input_ids: Sequence[int] | np.ndarray = ()) -> int:
        ids, probs = self._run(logits, input_ids)
        if len(ids) == 1:
            return int(ids[0])
        cdf = np.cumsum(probs, dtype=np.float64)
        u = self._rng.random() * cdf[-1]
        # first candidate whose running sum passes u (never a zero-probability one)
        k = int(np.searchsorted(cdf, u, side="right"))
        return int(ids[min(k, len(ids) - 1)])

    def distribution(self, logits: np.ndarray, input_ids: Sequence[int] | np.ndarray = ()
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(candidate ids, probabilities) after every filter and the temperature.

        Greedy settings give one candidate with probability 1. The ids are in no
        particular order.
        """
        return self._run(logits, input_ids)

    # ---- pipeline ---------------------------------------------------------------------

    def _run(self, logits, input_ids) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        x = self._prepare(logits, input_ids)
        n = x.shape[0]

        if p.greedy and p.typical_p >= 1.0:
            # every filter but typical-p keeps the best token, so greedy is a plain argmax
            return np.array([int(np.argmax(x))]), np.ones(1)

        cand = None  # None: every token is a candidate (avoids an arange of the vocab)
        vals = x

        # top-k
        if 0 < p.top_k < n:
            cand = np.argpartition(x, n - p.top_k)[n - p.top_k:]
            vals = x[cand]

        # typical-p
        if p.typical_p < 1.0:
            probs = _softmax(vals)
            with np.errstate(divide="ignore", invalid="ignore"):
                logp = np.log(probs)
                ent = -np.sum(np.where(probs > 0, probs * logp, 0.0))
                shifted = np.where(probs > 0, np.abs(-logp - ent), np.inf)
            keep = _best_run(-shifted, probs, p.typical_p, strict=True, min_keep=p.min_keep)
            cand, vals = _take(cand, vals, keep)

        # top-p and min-p
        if p.top_p < 1.0 and p.min_p > 0.0:
            # Both keep a prefix of the candidates in logit order, so the result is the
            # shorter prefix: min-p first as a linear mask, then top-p searched only among
            # its survivors, with probabilities still normalised over all candidates.
            keep = _min_p_keep(vals, p.min_p, p.min_keep)
            m = vals.max()
            w = np.exp((vals - m).astype(np.float64))
            total = w.sum()
            sub = vals[keep]
            wsub = w[keep] / total
            if wsub.sum() >= p.top_p:
                inner = _best_run(sub, wsub, p.top_p, strict=False, min_keep=p.min_keep)
                keep = keep[inner]
            cand, vals = _take(cand, vals, keep)
        else:
            if p.top_p < 1.0:
                keep = _best_run(vals, _softmax(vals), p.top_p, strict=False,
                                 min_keep=p.min_keep)
                cand, vals = _take(cand, vals, keep)
            if p.min_p > 0.0:
                keep = _min_p_keep(vals, p.min_p, p.min_keep)
                cand, vals = _take(cand, vals, keep)

        if cand is None:
            cand = np.arange(n)

        if p.greedy:
            j = int(np.argmax(vals))
            return cand[j:j + 1].copy(), np.ones(1)

        probs = _softmax(vals / np.float32(p.temperature) if p.temperature != 1.0 else vals)
        return cand, probs

    def _prepare(self, logits, input_ids) -> np.ndarray:
        x = np.asarray(logits)
        if x.ndim != 1 or x.shape[0] == 0:
            raise ValueError(f"logits must be a non-empty 1-D array, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"logits must be floating point, got dtype {x.dtype}")
        n = x.shape[0]
        ids = np.asarray(input_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids[(ids < 0) | (ids >= n)][0])
            raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary of {n}")

        x = np.array(x, dtype=np.float32, copy=True)  # our own copy, processors may write
        for i, proc in enumerate(self.logits_processors):
            out = proc(ids.astype(np.intc), x)
            out = np.asarray(out)
            if out.shape != (n,):
                raise ValueError(f"logits_processors[{i}] returned shape {out.shape}, "
                                 f"expected ({n},)")
            x = out.astype(np.float32, copy=False)
        if np.isnan(x).any():
            first = int(np.flatnonzero(np.isnan(x))[0])
            raise ValueError(f"logits contain NaN (e.g. at token {first})")
        if not (x > -np.inf).any():
            raise ValueError("every logit is -inf: nothing can be sampled")

        p = self.params
        if p.penalties_on and ids.size:
            window = ids if p.repeat_last_n < 0 else ids[-p.repeat_last_n:]
            toks, counts = np.unique(window, return_counts=True)
            v = x[toks]
            v = np.where(v <= 0, v * np.float32(p.repeat_penalty),
                         v / np.float32(p.repeat_penalty))
            v = v - (counts.astype(np.float32) * np.float32(p.frequency_penalty)
                     + np.float32(p.presence_penalty))
            x[toks] = v.astype(np.float32)
        return x


# ---- helpers ------------------------------------------------------------------------------


def _softmax(v: np.ndarray) -> np.ndarray:
    m = v.max()
    e = np.exp((v - m).astype(np.float64))
    return e / e.sum()


def _take(cand, vals, keep):
    """Restrict (cand, vals) to positions `keep` (cand None means all ids)."""
    return (keep if cand is None else cand[keep]), vals[keep]


def _min_p_keep(vals: np.ndarray, min_p: float, min_keep: int) -> np.ndarray:
    """Positions whose probability is at least min_p times the best one's."""
    thr = vals.max() + np.float32(math.log(min_p))
    keep = np.flatnonzero(vals >= thr)
    if keep.size < min_keep:
        k = min(min_keep, vals.size)
        keep = np.argpartition(vals, vals.size - k)[vals.size - k:]
    return keep


def _reached(total: float, target: float, strict: bool) -> bool:
    return total > target if strict else total >= target


def _best_run(keys: np.ndarray, weights: np.ndarray, target: float, strict: bool,
              min_keep: int) -> np.ndarray:
    """Positions of the shortest run of highest-`keys` items whose `weights` sum reaches
    `target` (> if strict, >= otherwise), made at least `min_keep` long; all items if no
    run reaches it.

    Up to _SMALL items are sorted. Above that, the best _FIRST_RUN items are partitioned
    out and sorted; if they fall short, a quickselect over the rest finds the run length
    (each round partitions the undecided items around their middle and keeps the half
    that holds the end of the run), so the work is linear and nothing large is sorted.
    """
    n = keys.shape[0]

    def first_hit(order: np.ndarray) -> int | None:
        cum = np.cumsum(weights[order], dtype=np.float64)
        hit = np.flatnonzero(cum > target) if strict else np.flatnonzero(cum >= target)
        return int(hit[0]) + 1 if hit.size else None

    def top(m: int) -> np.ndarray:
        if m >= n:
            return np.arange(n)
        return np.argpartition(keys, n - m)[n - m:]

    if n <= _SMALL:
        order = np.argsort(-keys, kind="stable")
        m = first_hit(order)
        return order[:n if m is None else max(m, min_keep)]

    split = np.argpartition(keys, n - _FIRST_RUN)
    best = split[n - _FIRST_RUN:]
    order = best[np.argsort(-keys[best], kind="stable")]
    m = first_hit(order)
    if m is not None:
        m = max(m, min_keep)
        return order[:m] if m <= _FIRST_RUN else top(m)

    acc = float(weights[best].sum(dtype=np.float64))  # in the run, still short of target
    if not _reached(acc + float(weights[split[:n - _FIRST_RUN]].sum(dtype=np.float64)),
                    target, strict):
        return np.arange(n)
    chosen = [best]
    pool = split[:n - _FIRST_RUN]  # undecided; the run ends inside it
    while pool.size > 1:
        h = (pool.size + 1) // 2
        part = pool[np.argpartition(keys[pool], pool.size - h)]
        upper, lower = part[pool.size - h:], part[:pool.size - h]
        s = float(weights[upper].sum(dtype=np.float64))
        if _reached(acc + s, target, strict):
            pool = upper
        else:
            acc += s
            chosen.append(upper)
            pool = lower
    chosen.append(pool)
    run = np.concatenate(chosen)
    if run.size < min_keep:
        return top(min_keep)
    return run
