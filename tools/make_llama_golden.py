"""Regenerate the llama.cpp reference figures the tests compare against (run by hand, not by CI).

Run with the llama-cpp-python venv's interpreter (it is never a dependency of lutllm):
    ~/.cache/lutllm-bench/llama-venv/bin/python tools/make_llama_golden.py MODEL.gguf --out tests/data/llama_golden_smollm2.json
Writes: llama.cpp's perplexity on tests/data/ppl_text.txt (llama-perplexity's method, computed
through llama-cpp-python's logits, with the token ids it used) and the first 32 greedy tokens of a
fixed chat prompt (a plain-text prompt for base models without a chat template), with the gap
between the top two logits at each step (where it is tiny, rounding decides the token).
"""
import argparse
import hashlib
import json
import math
import pathlib

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHAT_PROMPT = "What is the capital of France? Answer in one sentence."
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def perplexity(model_path, text, n_ctx, n_threads):
    llm = Llama(model_path=model_path, n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads, logits_all=True,
                verbose=False)
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
    tokens = llm.tokenize(text.encode(), add_bos=add_bos, special=False)
    n_chunks = len(tokens) // n_ctx
    first = n_ctx // 2
    nll, count, chunk_nll = 0.0, 0, []
    for i in range(n_chunks):
        chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        rows = logits[first:n_ctx - 1]
        tgt = np.asarray(chunk[first + 1:n_ctx])
        mx = rows.max(axis=1)
        lse = mx + np.log(np.exp(rows - mx[:, None]).sum(axis=1))
        chunk = float((lse - rows[np.arange(len(tgt)), tgt]).sum())
        chunk_nll.append(chunk / len(tgt))
        nll += chunk
        count += len(tgt)
    return math.exp(nll / count), n_chunks, list(map(int, tokens)), add_bos, chunk_nll


def greedy(model_path, n_threads, user, n_predict=32):
    # logits_all: with it off, this llama-cpp-python version leaves llm.scores at zero after eval
    llm = Llama(model_path=model_path, n_ctx=512, n_threads=n_threads, logits_all=True, verbose=False)
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    meta = llm.metadata
    if "tokenizer.chat_template" in meta:
        fmt = Jinja2ChatFormatter(template=meta["tokenizer.chat_template"],
                                  eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
                                  bos_token=llm.detokenize([llm.token_bos()], special=True).decode())
        prompt = fmt(messages=[{"role": "user", "content": user}]).prompt
        toks = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    else:  # a base model: continue plain text, with BOS when the model adds it
        prompt = user
        add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
        toks = llm.tokenize(prompt.encode(), add_bos=add_bos, special=False)
    llm.eval(toks)
    out, margins = [], []
    for _ in range(n_predict):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        t = int(np.argmax(logits))
        top2 = np.sort(logits)[-2:]
        out.append(t)
        margins.append(float(top2[1] - top2[0]))
        llm.eval([t])
    return prompt, toks, out, margins, llm.detokenize(out).decode("utf-8", errors="replace"), "tokenizer.chat_template" in meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", default=str(ROOT / "tests/data/ppl_text.txt"))
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--user", default=CHAT_PROMPT, help="chat message (or plain prompt for a base model)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    text = pathlib.Path(a.text).read_text(encoding="utf-8")
    ppl, n_chunks, tokens, add_bos, chunk_nll = perplexity(a.model, text, a.ctx, a.threads)
    prompt, ptoks, gen, margins, gen_text, chat = greedy(a.model, a.threads, a.user)
    res = {
        "model_sha256": sha256(a.model),
        "llama_cpp_python": llama_cpp.__version__,
        "perplexity": {"text": pathlib.Path(a.text).name, "ctx": a.ctx, "ppl": ppl, "chunks": n_chunks,
                       "n_tokens": len(tokens), "add_bos": bool(add_bos), "chunk_nll": chunk_nll,
                       "tokens": tokens},
        "greedy": {"user": a.user, "chat": chat, "prompt": prompt, "prompt_tokens": list(map(int, ptoks)),
                   "tokens": gen, "top2_margins": margins, "text": gen_text},
    }
    pathlib.Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res["perplexity"].items() if k != "tokens"}), "\n", gen_text)


if __name__ == "__main__":
    main()
