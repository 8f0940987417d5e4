"""Writes tests/data/tokenizer_golden_smollm2.json: llama.cpp's token ids and detokenized bytes.

A developer tool, not part of the package and not run by the tests. Run it with an
interpreter that has llama-cpp-python installed; it only loads the vocabulary:

    /root/.cache/lutllm-bench/llama-venv/bin/python tools/make_tokenizer_golden.py \
        --model /path/to/SmolLM2-135M-Instruct.Q4_1.gguf

For every line of tests/data/tokenizer_corpus.txt, the whole corpus as one string, and a
seeded set of generated stress strings, it records `Llama.tokenize(text, add_bos, special)`
for add_bos and special in {False, True}, and the bytes of llama.cpp's detokenizer for the
special=False and special=True ids. It also records per-token pieces (hashed, plus a sample),
the end-of-generation set and the model's special ids.

To check the other pre-tokenizers against llama.cpp as well, it writes vocabulary-only
copies of the model whose only change is `tokenizer.ggml.pre` (llama-bpe, qwen2, gpt-2,
default) and records their ids too. Writing those copies needs the `gguf` package, which
the llama-cpp-python venv may lack, so that step runs under `--gguf-python` (default
`python3`) by calling this script with `--write-variant`.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(ROOT, "tests", "data", "tokenizer_corpus.txt")
PRE_VARIANTS = ["llama-bpe", "qwen2", "gpt-2", "default"]
OUT = os.path.join(ROOT, "tests", "data", "tokenizer_golden_smollm2.json")

# Building blocks for the generated stress strings: edge cases of the pre-tokenizer
# (whitespace runs next to digits/letters, apostrophes, special-token texts, mixed scripts).
STRESS_ATOMS = [
    " ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "\u2009",
    "a", "b", "Z", "hello", "World", "the", "\u00e9", "\u00df", "\u0436", "\u03bb",
    "0", "1", "7", "42", "2024", "3.5", "1,000", "\u00b2", "\u0663", "\uff11",
    "'", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "\u2019",
    ".", ",", "!", "?", "-", "_", "(", ")", "{", "}", "#", "$", "%", "+", "=", "<", ">",
    "|", "`", "~", "^", "...", "->", "==", "//", "/*", "*/",
    "\u4e2d", "\u6587", "\u3042", "\u30a2", "\ud55c", "\uae00", "\u0639", "\u0928\u093f",
    "\U0001F600", "\U0001F44D\U0001F3FD", "\u200d", "\ufe0f", "\u200b", "\u0301",
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<reponame>", "<|im_start", "|>", "<",
    # bytes 0x04 and 0xF1 have no token in the SmolLM2 vocabulary
    "\x04", "\U00040000",
]


def corpus_lines(text: str) -> list[str]:
    """Lines of the corpus, split on "\\n" only (a "\\r" inside a line is content)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def stress_strings(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        out.append("".join(rng.choice(STRESS_ATOMS) for _ in range(k)))
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pieces_digest(pieces: list[bytes]) -> str:
    """sha256 over the pieces, each prefixed by its length (4 bytes, little endian)."""
    h = hashlib.sha256()
    for p in pieces:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def to_json(golden: dict) -> str:
    """JSON with one line per top-level key and one line per case (diffable, compact)."""
    lines = []
    for k, v in golden.items():
        if k == "cases":
            body = ",\n  ".join(json.dumps(c, ensure_ascii=True) for c in v)
            lines.append(f' "cases": [\n  {body}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=True)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_variant(src: str, pre: str, out: str) -> None:
    """Copy the metadata of `src` (no tensors) to `out`, with tokenizer.ggml.pre = `pre`."""
    import gguf

    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"]
    w = gguf.GGUFWriter(out, arch=bytes(arch.parts[arch.data[0]]).decode())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        if key == "tokenizer.ggml.pre":
            w.add_string(key, pre)
        elif vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                val = [field.parts[i][0].item() for i in field.data]
            w.add_key_value(key, val, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_key_value(key, bytes(field.parts[field.data[0]]).decode("utf-8"), vtype)
        else:
            w.add_key_value(key, field.parts[field.data[0]][0].item(), vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="SmolLM2-135M-Instruct GGUF file")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--stress", type=int, default=250, help="number of generated strings")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--gguf-python", default="python3",
                    help="interpreter with the `gguf` package (writes the variant vocabularies)")
    ap.add_argument("--write-variant", nargs=2, metavar=("PRE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.write_variant:
        write_variant(args.model, args.write_variant[0], args.write_variant[1])
        return 0

    try:
        import llama_cpp
    except ImportError:
        print("error: llama_cpp is not importable by this interpreter "
              f"({sys.executable}); run this with the llama-cpp-python venv", file=sys.stderr)
        return 2
    if not os.path.isfile(args.model):
        print(f"error: model file not found: {args.model}", file=sys.stderr)
        return 2

    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    vocab = llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    def piece(token: int, special: bool) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, special)
            if n < 0:
                size = -n
                continue
            return buf.raw[:n]

    def detokenize(ids: list[int], special: bool) -> bytes:
        arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
            if n < 0:
                size = -n
                continue
            return buf.raw[:n]

    with open(CORPUS, encoding="utf-8", newline="") as f:
        corpus = f.read()

    texts: list[tuple[str, str]] = []
    for i, line in enumerate(corpus_lines(corpus)):
        texts.append((f"line {i + 1}", line))
    texts.append(("whole corpus", corpus))
    for i, s in enumerate(stress_strings(args.stress, args.seed)):
        texts.append((f"stress {i}", s))

    variants = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for pre in PRE_VARIANTS:
            path = os.path.join(tmpdir, f"vocab-{pre}.gguf")
            subprocess.run([args.gguf_python, os.path.abspath(__file__), "--model", args.model,
                            "--write-variant", pre, path], check=True)
            v = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
            variants[pre] = [
                {f"special={sp}": v.tokenize(t.encode("utf-8"), add_bos=True, special=sp)
                 for sp in (False, True)}
                for _, t in texts
            ]
            del v

    cases = []
    n_py_detok_differs = 0
    for k, (name, text) in enumerate(texts):
        raw = text.encode("utf-8")
        ids = {}
        for add_bos in (False, True):
            for special in (False, True):
                ids[f"add_bos={add_bos},special={special}"] = llm.tokenize(
                    raw, add_bos=add_bos, special=special)
        detok = {}
        for special in (False, True):
            tok = ids[f"add_bos=False,special={special}"]
            d = detokenize(tok, special)
            by_piece = b"".join(piece(t, special) for t in tok)
            if d != by_piece:
                raise SystemExit(f"{name}: llama_detokenize and token_to_piece disagree")
            if llm.detokenize(tok, special=special) != d:
                n_py_detok_differs += 1
            detok[f"special={special}"] = d.hex()
        cases.append({"name": name, "text": text, "ids": ids, "detok_hex": detok,
                      "ids_by_pre": {pre: variants[pre][k] for pre in PRE_VARIANTS}})

    pieces_false = [piece(t, False) for t in range(n_vocab)]
    pieces_true = [piece(t, True) for t in range(n_vocab)]
    sample = sorted(set(range(0, 300)) | {t for t in range(n_vocab) if len(pieces_true[t]) > 32}
                    | set(range(n_vocab - 50, n_vocab)))
    import importlib.metadata as md

    golden = {
        "about": "llama.cpp tokenizer output for the SmolLM2 vocabulary; written by "
                 "tools/make_tokenizer_golden.py, do not edit by hand",
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "llama_cpp_python_version": md.version("llama_cpp_python"),
        "stress_seed": args.seed,
        "ids_by_pre_note": "ids_by_pre: add_bos=True ids from vocabulary-only copies of the "
                           "model that differ only in tokenizer.ggml.pre",
        "n_vocab": n_vocab,
        "bos_id": llama_cpp.llama_vocab_bos(vocab),
        "eos_id": llama_cpp.llama_vocab_eos(vocab),
        "eot_id": llama_cpp.llama_vocab_eot(vocab),
        "nl_id": llama_cpp.llama_vocab_nl(vocab),
        "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
        "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
        "eog_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
        "control_ids": [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_control(vocab, t)],
        "pieces_digest": {"special=False": pieces_digest(pieces_false),
                          "special=True": pieces_digest(pieces_true)},
        "pieces_sample_hex": {str(t): [pieces_false[t].hex(), pieces_true[t].hex()]
                              for t in sample},
        "cases": cases,
    }

    d = os.path.dirname(os.path.abspath(args.out))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".golden-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(to_json(golden))
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {args.out}: {len(cases)} cases; Llama.detokenize differed from "
          f"llama_detokenize on {n_py_detok_differs} of {2 * len(cases)} decodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
