"""lutllm.Llama, used the way llama-cpp-python scripts use Llama: response shapes and content,
streaming, stop strings, logprobs, state save/load, tokenize. One model is loaded per module.
"""
import threading
import time

import numpy as np
import pytest

from lutllm import Llama, LlamaState

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def llm(smollm2_path):
    return Llama(model_path=smollm2_path, n_ctx=512, seed=1)


def _check_completion_shape(r, n_prompt):
    assert set(r) == {"id", "object", "created", "model", "choices", "usage"}
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-")
    assert isinstance(r["created"], int) and isinstance(r["model"], str)
    (c,) = r["choices"]
    assert set(c) == {"text", "index", "logprobs", "finish_reason"} and c["index"] == 0
    assert c["finish_reason"] in ("stop", "length")
    u = r["usage"]
    assert u["prompt_tokens"] == n_prompt
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_facts(llm, smollm2_path):
    assert llm.n_ctx() == 512
    assert llm.n_vocab() == 49152  # SmolLM2's vocabulary
    assert llm.token_eos() == llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]
    assert llm.metadata["general.architecture"] == "llama"
    assert llm.model_path == smollm2_path


def test_tokenize_detokenize(llm):
    text = "Hello, world! Ünïcödé ✓".encode()
    toks = llm.tokenize(text, add_bos=False)
    assert all(isinstance(t, int) for t in toks)
    assert llm.detokenize(toks) == text
    # control-token text is split into pieces unless special=True
    assert len(llm.tokenize(b"<|im_start|>", add_bos=False, special=True)) == 1
    assert len(llm.tokenize(b"<|im_start|>", add_bos=False, special=False)) > 1
    assert llm.detokenize(llm.tokenize(b"<|im_start|>", add_bos=False, special=True)) == b""
    assert llm.detokenize(llm.tokenize(b"<|im_start|>", add_bos=False, special=True), special=True) == b"<|im_start|>"
    with pytest.raises(TypeError):
        llm.tokenize("a str")
    with pytest.raises(ValueError, match="UTF-8"):
        llm.tokenize(b"\xff\xfe")


def test_chat_paris(llm):
    r = llm.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=48)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    (c,) = r["choices"]
    assert c["message"]["role"] == "assistant"
    assert "Paris" in c["message"]["content"]
    assert c["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] > 0


def test_chat_stream_matches(llm):
    full = llm.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=48)
    chunks = list(llm.create_chat_completion(messages=QUESTION, temperature=0, max_tokens=48, stream=True))
    assert all(ch["object"] == "chat.completion.chunk" for ch in chunks)
    assert len({ch["id"] for ch in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks)
    assert text == full["choices"][0]["message"]["content"]


def test_completion_and_stream(llm):
    prompt = "The three primary colors are"
    n_prompt = len(llm.tokenize(prompt.encode(), special=True))
    r = llm(prompt, max_tokens=20, temperature=0)
    _check_completion_shape(r, n_prompt)
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 20
    chunks = list(llm.create_completion(prompt, max_tokens=20, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == r["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    # echo puts the prompt in front
    e = llm(prompt, max_tokens=20, temperature=0, echo=True)
    assert e["choices"][0]["text"] == prompt + r["choices"][0]["text"]


def test_stop_strings(llm):
    prompt = "Count: 1, 2, 3, 4,"
    base = llm(prompt, max_tokens=24, temperature=0)["choices"][0]["text"]
    stop = base[6:9]  # a stop string in the middle of the free-running answer
    assert stop.strip()
    want = base[: base.find(stop)]
    r = llm(prompt, max_tokens=24, temperature=0, stop=[stop, "never-appears"])
    assert r["choices"][0]["text"] == want and r["choices"][0]["finish_reason"] == "stop"
    pieces = [c["choices"][0]["text"] for c in llm(prompt, max_tokens=24, temperature=0, stop=stop, stream=True)]
    assert "".join(pieces) == want
    assert not any(stop in p for p in pieces)


def test_max_tokens_none_fills_context(smollm2_path):
    small = Llama(smollm2_path, n_ctx=40)
    eos = small.token_eos()

    def no_eos(ids, scores):
        scores[eos] = -np.inf
        return scores

    prompt = "Once upon a time"
    n_prompt = len(small.tokenize(prompt.encode(), special=True))
    r = small(prompt, max_tokens=None, temperature=0, logits_processor=[no_eos])
    assert r["usage"]["completion_tokens"] == 40 - n_prompt
    assert r["choices"][0]["finish_reason"] == "length"
    with pytest.raises(ValueError, match="exceed context window"):
        small("word " * 100, max_tokens=4)


def test_generate_runs_to_the_end_of_the_context(smollm2_path):
    """Llama.generate (llama-cpp style) yields end-of-generation tokens and stops only when the
    context is full: one token after the last position that fits, which is never evaluated; its
    greedy tokens are the ones the completion path produces."""
    small = Llama(smollm2_path, n_ctx=24)
    prompt = small.tokenize(b"Once upon a time", special=True)
    toks = list(small.generate(prompt, temp=0))
    assert len(toks) == 24 - len(prompt) + 1
    assert small.n_tokens == 24  # every token but the last was evaluated
    assert small.input_ids.tolist() == prompt + toks[:-1]
    assert small.scores is not None and int(np.argmax(small.scores)) == toks[-1]
    eos = small.token_eos()
    if eos not in toks:  # without an EOS on the way, completion agrees token for token
        r = small(prompt, max_tokens=None, temperature=0)
        assert small.tokenize(r["choices"][0]["text"].encode(), add_bos=False) == toks[:-1]


def test_logprobs_match_softmax(llm, smollm2_path):
    prompt = "The capital of France is"
    r = llm(prompt, max_tokens=3, temperature=0, logprobs=3)
    lp = r["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert "".join(lp["tokens"]) == r["choices"][0]["text"]
    assert lp["text_offset"][0] == 0
    # independent expectation: softmax of the engine's logits for the prompt, computed here
    eng = llm._engine
    toks = llm.tokenize(prompt.encode(), special=True)
    logits = np.asarray(eng.eval(toks)[-1], dtype=np.float64)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    best = int(np.argmax(p))
    assert lp["tokens"][0] == llm.detokenize([best]).decode()
    assert lp["token_logprobs"][0] == pytest.approx(np.log(p[best]), abs=1e-4)
    order = np.argsort(-p)[:3]
    top = lp["top_logprobs"][0]
    assert list(top) == [llm.detokenize([int(i)]).decode() for i in order]
    assert list(top.values()) == pytest.approx([np.log(p[i]) for i in order], abs=1e-4)
    # chat form
    c = llm.create_chat_completion(QUESTION, temperature=0, max_tokens=4, logprobs=True, top_logprobs=2)
    content = c["choices"][0]["logprobs"]["content"]
    assert len(content) == c["usage"]["completion_tokens"]
    assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 2 for e in content)


def test_save_load_state(llm):
    toks = llm.tokenize(b"My favourite animal is the", special=True)
    llm.reset()
    llm.eval(toks)
    state = llm.save_state()
    assert isinstance(state, LlamaState) and state.n_tokens == len(toks)

    def run(seed):
        out = []
        for t in llm.generate([], temp=0.9, seed=seed, reset=False):
            out.append(t)
            if len(out) == 5:
                break
        return out

    first = run(7)
    llm("Something unrelated that overwrites the cache.", max_tokens=2)
    llm.load_state(state)
    assert llm.n_tokens == len(toks)
    assert run(7) == first
    # greedy generate() from the same tokens also agrees with a fresh greedy completion
    llm.load_state(state)
    g = []
    for t in llm.generate([], temp=0, reset=False):
        g.append(t)
        if len(g) == 4:
            break
    c = llm(toks, max_tokens=4, temperature=0, stop=None)
    assert llm.detokenize(g).decode() == c["choices"][0]["text"]


def test_seed_reproducible(llm):
    a = llm("Tell me a story", max_tokens=6, temperature=1.0, seed=123)["choices"][0]["text"]
    b = llm("Tell me a story", max_tokens=6, temperature=1.0, seed=123)["choices"][0]["text"]
    assert a == b


def test_stopping_criteria_and_callback(llm):
    seen = []

    def stop_after_3(ids, logits):
        return len(seen) >= 3

    def cb(tok):
        seen.append(tok)

    r = llm("Hello", max_tokens=20, temperature=0, stopping_criteria=[stop_after_3], token_callback=cb)
    assert r["usage"]["completion_tokens"] == 3 and r["choices"][0]["finish_reason"] == "stop"
    r = llm("Hello", max_tokens=20, temperature=0, token_callback=lambda t: False)
    assert r["usage"]["completion_tokens"] == 1 and r["choices"][0]["finish_reason"] == "stop"


def test_cancel_from_other_thread(smollm2_path):
    m = Llama(smollm2_path, n_ctx=2048)
    eos = m.token_eos()

    def no_eos(ids, scores):
        scores[eos] = -np.inf
        return scores

    got = []
    t0 = time.monotonic()
    for i, ch in enumerate(m("A long essay:", max_tokens=1000, temperature=0, stream=True, logits_processor=[no_eos])):
        got.append(ch)
        if i == 2:
            threading.Thread(target=m.cancel).start()
        assert i < 50, "cancel did not stop the generation"
    assert time.monotonic() - t0 < 20
    assert got[-1]["choices"][0]["finish_reason"] == "stop"
    # the instance stays usable
    assert m("Hi", max_tokens=2, temperature=0)["usage"]["completion_tokens"] >= 1


def test_bad_arguments(smollm2_path, llm):
    with pytest.raises(ValueError, match="n_gpu_layers"):
        Llama(smollm2_path, n_gpu_layers=10)
    with pytest.raises(ValueError, match="lora_path"):
        Llama(smollm2_path, lora_path="x.gguf")
    with pytest.raises(TypeError, match="unexpected keyword"):
        Llama(smollm2_path, no_such_option=1)
    with pytest.raises(ValueError, match="top_p"):
        llm("x", top_p=2.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm([1, 10**9], max_tokens=1)
    with pytest.raises(ValueError, match="grammar"):
        llm("x", grammar="root ::= x")


def test_vocab_only(smollm2_path):
    v = Llama(smollm2_path, vocab_only=True, mem_budget=1 << 20)
    assert v.mem_budget == 1 << 20
    assert v.detokenize(v.tokenize(b"hello there", add_bos=False)) == b"hello there"
    with pytest.raises(RuntimeError, match="vocab_only"):
        v("hello")


def test_state_pickles_and_checks_size(llm, smollm2_path):
    import pickle

    llm.reset()
    llm.eval(llm.tokenize(b"Pickled state", special=True))
    state = pickle.loads(pickle.dumps(llm.save_state()))
    want = llm.scores.copy()
    llm.reset()
    llm.load_state(state)
    assert np.array_equal(llm.scores, want)
    bad = LlamaState(state.input_ids, state.kv[:-1], state.scores, state.n_vocab, state.n_ctx)
    with pytest.raises(ValueError, match="floats"):
        llm.load_state(bad)


def test_default_context(smollm2_path):
    m = Llama(smollm2_path, n_ctx=0)
    assert m.n_ctx() == min(int(m.metadata["llama.context_length"]), 4096)


def test_close_and_context_manager(smollm2_path):
    with Llama(smollm2_path, n_ctx=64) as m:
        assert m.n_embd() == int(m.metadata["llama.embedding_length"])
    with pytest.raises(RuntimeError, match="closed"):
        m("hello", max_tokens=1)


def test_prefix_reuse_across_chat_turns(llm):
    first = llm.create_chat_completion(QUESTION, temperature=0, max_tokens=8)
    n_first = first["usage"]["prompt_tokens"]
    follow = QUESTION + [first["choices"][0]["message"], {"role": "user", "content": "And of Italy?"}]
    eng = llm._engine
    computed = []  # tokens each eval call had to compute (not taken from the cache)
    real_eval = eng.eval

    def recording_eval(tokens, *a, **k):
        out = real_eval(tokens, *a, **k)
        computed.append(len(tokens) - eng.last_reused)
        return out

    eng.eval = recording_eval
    try:
        second = llm.create_chat_completion(follow, temperature=0, max_tokens=4)
    finally:
        del eng.eval
    # the second prompt starts with the first one: only the new turn is computed
    assert computed[0] <= second["usage"]["prompt_tokens"] - n_first + 1
    assert second["usage"]["prompt_tokens"] > n_first
