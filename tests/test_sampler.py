"""Tests for lutllm.sampler against a plain sort-based reference written here.

The reference follows llama.cpp's sampler chain step by step on a fully sorted candidate
list (the simple way the sampler avoids); expected penalty values are worked out by hand.
No timing assertions: "no full sort" is checked by making large sorts raise.
"""
import math
from collections import Counter

import numpy as np
import pytest

from lutllm.sampler import Sampler, SamplerParams

# ----------------------------------------------------------------------------------------
# the reference
# ----------------------------------------------------------------------------------------


def _softmax64(v):
    v = np.asarray(v, dtype=np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


def reference_distribution(logits, history, P: SamplerParams) -> dict[int, float]:
    """{token: probability} after penalties, top-k, typical, top-p, min-p, temperature."""
    x = np.array(logits, dtype=np.float32)
    # penalties over the last repeat_last_n tokens
    on = P.repeat_last_n != 0 and not (P.repeat_penalty == 1 and P.frequency_penalty == 0
                                       and P.presence_penalty == 0)
    if on and len(history):
        window = list(history) if P.repeat_last_n < 0 else list(history)[-P.repeat_last_n:]
        for tok, c in Counter(window).items():
            v = x[tok]
            v = v * np.float32(P.repeat_penalty) if v <= 0 else v / np.float32(P.repeat_penalty)
            v = v - (np.float32(c) * np.float32(P.frequency_penalty)
                     + np.float32(P.presence_penalty))
            x[tok] = v
    cand = [int(i) for i in np.argsort(-x, kind="stable")]  # every token, best first
    if 0 < P.top_k < len(cand):
        cand = cand[:P.top_k]
    if P.typical_p < 1:
        p = _softmax64(x[cand])
        ent = -sum(pi * math.log(pi) for pi in p if pi > 0)
        shifted = [abs(-math.log(pi) - ent) if pi > 0 else math.inf for pi in p]
        order = sorted(range(len(cand)), key=lambda i: shifted[i])
        cum, last = 0.0, len(order)
        for j, i in enumerate(order):
            cum += p[i]
            if cum > P.typical_p and j + 1 >= P.min_keep:
                last = j + 1
                break
        cand = [cand[i] for i in order[:last]]
    if P.top_p < 1:
        cand.sort(key=lambda t: -x[t])
        p = _softmax64(x[cand])
        cum, last = 0.0, len(cand)
        for j in range(len(cand)):
            cum += p[j]
            if cum >= P.top_p and j + 1 >= P.min_keep:
                last = j + 1
                break
        cand = cand[:last]
    if P.min_p > 0:
        thr = max(x[t] for t in cand) + np.float32(math.log(P.min_p))
        kept = [t for t in cand if x[t] >= thr]
        if len(kept) < P.min_keep:
            kept = sorted(cand, key=lambda t: -x[t])[:P.min_keep]
        cand = kept
    if P.temperature <= 0:
        return {max(cand, key=lambda t: x[t]): 1.0}
    p = _softmax64(x[cand] / np.float32(P.temperature))
    return dict(zip(cand, p))


def as_dict(ids, probs):
    assert len(ids) == len(set(int(i) for i in ids))
    return {int(i): float(p) for i, p in zip(ids, probs)}


def assert_same_distribution(got, want):
    assert set(got) == set(want), (
        f"candidate sets differ: {len(got)} vs {len(want)} tokens; "
        f"only ours {sorted(set(got) - set(want))[:8]}, only reference "
        f"{sorted(set(want) - set(got))[:8]}")
    ids = sorted(want)
    np.testing.assert_allclose([got[i] for i in ids], [want[i] for i in ids],
                               rtol=1e-5, atol=1e-12)


def _logits(n, scale, seed):
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


# ----------------------------------------------------------------------------------------
# distributions
# ----------------------------------------------------------------------------------------

SETTINGS = [
    {},  # llama.cpp defaults
    dict(top_k=0),
    dict(top_k=0, min_p=0.0),
    dict(top_k=0, min_p=0.0, top_p=1.0),
    dict(top_k=0, top_p=0.5, min_p=0.2),
    dict(top_k=0, typical_p=0.9),
    dict(top_k=0, typical_p=0.7, min_p=0.0, top_p=0.9),
    dict(top_k=200, typical_p=0.95, top_p=0.8),
    dict(top_k=5, temperature=1.7),
    dict(top_k=1),
    dict(top_k=0, top_p=0.3, min_keep=50, min_p=0.0),
    dict(top_k=0, min_p=0.9, min_keep=7),
    dict(temperature=0.0),
    dict(temperature=-1.0, top_k=0),
    dict(temperature=0.0, typical_p=0.5, top_k=0),
    dict(repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.5),
    dict(repeat_penalty=1.3, repeat_last_n=-1, top_k=0, min_p=0.0),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[str(s) for s in SETTINGS])
@pytest.mark.parametrize("n, scale", [(300, 2.0), (3000, 3.0), (50_000, 3.0), (50_000, 0.3)])
def test_distribution_matches_reference(settings, n, scale):
    P = SamplerParams(**settings)
    logits = _logits(n, scale, seed=n + int(scale * 10))
    history = np.random.default_rng(5).integers(0, n, size=100)
    history[-10:] = np.argsort(-logits)[:10]  # penalise some of the best tokens
    got = as_dict(*Sampler(P).distribution(logits, history))
    assert_same_distribution(got, reference_distribution(logits, history, P))


def test_flat_large_vocabulary_takes_the_quickselect_path():
    # 262144 nearly equal logits: the top-p run covers most of the vocabulary
    P = SamplerParams(top_k=0, min_p=0.0, top_p=0.95)
    logits = _logits(262_144, 0.05, seed=3)
    ids, probs = Sampler(P).distribution(logits)
    want = reference_distribution(logits, [], P)
    assert len(want) > 200_000
    assert_same_distribution(as_dict(ids, probs), want)


def test_no_full_vocabulary_sort(monkeypatch):
    n = 50_000
    calls = []

    def guard(real):
        def wrapped(a, *args, **kwargs):
            size = np.asarray(a).size
            calls.append(size)
            if size > n // 8:
                raise AssertionError(f"sort of {size} items")
            return real(a, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(np, "sort", guard(np.sort))
    monkeypatch.setattr(np, "argsort", guard(np.argsort))
    monkeypatch.setattr(np, "lexsort", guard(np.lexsort))
    for settings in SETTINGS:
        s = Sampler(SamplerParams(seed=0, **settings))
        for scale in (3.0, 0.3, 0.01):
            logits = _logits(n, scale, seed=1)
            s.sample(logits, [1, 2, 3])
            s.distribution(logits, [1, 2, 3])
    assert calls  # the guard did see the (small) sorts that are allowed


# ----------------------------------------------------------------------------------------
# draws, seeds, greedy
# ----------------------------------------------------------------------------------------


def test_draw_frequencies_follow_the_distribution():
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -3.0, -9.0], dtype=np.float32)
    P = SamplerParams(top_k=0, top_p=1.0, min_p=0.0, temperature=0.9, seed=123)
    want = reference_distribution(logits, [], P)
    s = Sampler(P)
    draws = 40_000
    counts = Counter(s.sample(logits) for _ in range(draws))
    chi2 = sum((counts.get(t, 0) - draws * p) ** 2 / (draws * p) for t, p in want.items())
    # 7 degrees of freedom: P(chi2 > 30) < 1e-4; the seed makes the outcome fixed anyway
    assert chi2 < 30, (chi2, counts)


def test_same_seed_same_tokens_and_reseed():
    logits = _logits(5000, 1.0, seed=9)
    a = Sampler(seed=42, top_k=0, min_p=0.0)
    b = Sampler(seed=42, top_k=0, min_p=0.0)
    seq_a = [a.sample(logits) for _ in range(50)]
    assert seq_a == [b.sample(logits) for _ in range(50)]
    assert len(set(seq_a)) > 5
    c = Sampler(seed=43, top_k=0, min_p=0.0)
    assert seq_a != [c.sample(logits) for _ in range(50)]
    a.reseed(42)
    assert seq_a == [a.sample(logits) for _ in range(50)]


def test_unseeded_samplers_differ():
    logits = np.zeros(1000, dtype=np.float32)
    P = SamplerParams(top_k=0, top_p=1.0, min_p=0.0)
    runs = {tuple(Sampler(P).sample(logits) for _ in range(20)) for _ in range(3)}
    assert len(runs) > 1


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_greedy_is_argmax(temperature):
    logits = _logits(50_000, 2.0, seed=11)
    s = Sampler(temperature=temperature, top_k=0)
    assert s.sample(logits) == int(np.argmax(logits))
    ids, probs = s.distribution(logits)
    assert list(ids) == [int(np.argmax(logits))] and list(probs) == [1.0]


def test_greedy_sees_the_penalties():
    logits = np.array([1.0, 5.0, 4.0], dtype=np.float32)
    s = Sampler(temperature=0, repeat_penalty=2.0)
    assert s.sample(logits, []) == 1
    assert s.sample(logits, [1]) == 2  # 5 / 2 = 2.5 < 4


# ----------------------------------------------------------------------------------------
# penalties, worked out by hand
# ----------------------------------------------------------------------------------------


def _plain(**kw):
    # everything but the penalties switched off, temperature 1: probs = softmax(penalised)
    return Sampler(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, **kw)


def test_penalty_math_matches_llama_cpp_definition():
    logits = np.array([2.0, -1.0, 0.5, 0.0, 3.0], dtype=np.float32)
    history = [0, 1, 0, 4, 3]
    s = _plain(repeat_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25,
               repeat_last_n=4)
    # window = last 4 = [1, 0, 4, 3]; each seen once.
    # positive logits are divided by the repeat penalty, non-positive ones multiplied;
    # then count * frequency + presence is subtracted.
    want = np.array([2.0 / 2 - 0.75, -1.0 * 2 - 0.75, 0.5, 0.0 * 2 - 0.75, 3.0 / 2 - 0.75])
    ids, probs = s.distribution(logits, history)
    got = as_dict(ids, probs)
    np.testing.assert_allclose([got[i] for i in range(5)], _softmax64(want), rtol=1e-6)


def test_penalty_counts_repeats_over_the_whole_history():
    logits = np.array([2.0, -1.0, 0.5], dtype=np.float32)
    s = _plain(repeat_penalty=1.0, frequency_penalty=0.5, presence_penalty=0.25,
               repeat_last_n=-1)
    # token 0 seen 3 times, token 1 once
    want = np.array([2.0 - 3 * 0.5 - 0.25, -1.0 - 0.5 - 0.25, 0.5])
    got = as_dict(*s.distribution(logits, [0, 1, 0, 0]))
    np.testing.assert_allclose([got[i] for i in range(3)], _softmax64(want), rtol=1e-6)


def test_penalties_off_by_default_and_with_zero_window():
    logits = np.array([2.0, -1.0, 0.5], dtype=np.float32)
    base = as_dict(*_plain().distribution(logits))
    assert as_dict(*_plain().distribution(logits, [0, 0, 1])) == base
    off = _plain(repeat_penalty=3.0, repeat_last_n=0)
    assert as_dict(*off.distribution(logits, [0, 0, 1])) == base


def test_defaults_are_llama_cpp_defaults():
    P = SamplerParams()
    assert (P.temperature, P.top_k, P.top_p, P.min_p, P.typical_p) == (0.8, 40, 0.95, 0.05, 1.0)
    assert (P.repeat_penalty, P.frequency_penalty, P.presence_penalty, P.repeat_last_n) == (
        1.0, 0.0, 0.0, 64)
    assert P.seed is None and not P.penalties_on


# ----------------------------------------------------------------------------------------
# logits processors
# ----------------------------------------------------------------------------------------


def test_logits_processor_runs_first_and_can_ban_tokens():
    logits = _logits(1000, 1.0, seed=2)
    best = int(np.argmax(logits))
    seen = []

    def ban_best(input_ids, scores):
        seen.append((input_ids.dtype, input_ids.tolist()))
        scores[best] = -np.inf  # in place is allowed: the sampler passes its own copy
        return scores

    before = logits.copy()
    s = Sampler(temperature=0, logits_processors=[ban_best])
    assert s.sample(logits, [3, 4]) != best
    assert np.array_equal(logits, before)
    assert seen == [(np.dtype(np.intc), [3, 4])]


def test_logits_processor_bad_output_is_named():
    s = Sampler(logits_processors=[lambda ids, x: x, lambda ids, x: x[:10]])
    with pytest.raises(ValueError, match=r"logits_processors\[1\]"):
        s.sample(np.zeros(100, dtype=np.float32))
    with pytest.raises(ValueError, match=r"logits_processors\[0\]"):
        Sampler(logits_processors=[42])


# ----------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("top_k", -1), ("top_k", 1.5), ("top_k", True),
    ("top_p", 0.0), ("top_p", 1.01), ("top_p", float("nan")),
    ("min_p", -0.1), ("min_p", 1.5),
    ("typical_p", 0.0), ("typical_p", 2.0),
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", "hot"),
    ("repeat_penalty", 0.0), ("repeat_penalty", -1.0),
    ("frequency_penalty", float("inf")), ("presence_penalty", None),
    ("repeat_last_n", -2), ("min_keep", -1), ("seed", -5), ("seed", 1.0),
])
def test_bad_parameters_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        SamplerParams(**{name: value})


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="top_q"):
        Sampler(top_q=0.5)


def test_bad_logits_and_history_are_rejected():
    s = Sampler()
    with pytest.raises(ValueError, match="1-D"):
        s.sample(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="floating"):
        s.sample(np.zeros(10, dtype=np.int32))
    x = np.zeros(10, dtype=np.float32)
    x[4] = np.nan
    with pytest.raises(ValueError, match="NaN.*4"):
        s.sample(x)
    with pytest.raises(ValueError, match="-inf"):
        s.sample(np.full(10, -np.inf, dtype=np.float32))
    with pytest.raises(ValueError, match="12"):
        s.sample(np.zeros(10, dtype=np.float32), [1, 12])
