"""Writes tests/data/tokenizer_golden_*.json: llama.cpp's token ids and detokenized bytes.

A developer tool, not part of the package and not run by the tests. Run it with an
interpreter that has llama-cpp-python installed; it only loads the vocabulary:

    PY=/root/.cache/lutllm-bench/llama-venv/bin/python
    $PY tools/make_tokenizer_golden.py --model .../SmolLM2-135M-Instruct.Q4_1.gguf
    $PY tools/make_tokenizer_golden.py --model .../gemma-3-270m-q4_k_m.gguf \
        --out tests/data/tokenizer_golden_gemma3.json
    $PY tools/make_tokenizer_golden.py --model .../qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
        --out tests/data/tokenizer_golden_qwen25coder.json
    $PY tools/make_tokenizer_golden.py --model .../qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
        --same-vocab-as tests/data/tokenizer_golden_qwen25coder.json

For Gemma vocabularies it also renders a few conversations with llama.cpp's built-in Gemma
chat format (`llama_chat_apply_template`), the reference for lutllm's fallback Gemma template.

For every line of tests/data/tokenizer_corpus.txt, the whole corpus as one string, a list of
hand-written edge cases (spaces, newlines, emoji, bytes without a token, special-token texts,
the empty string) and two seeded sets of generated stress strings, it records
`Llama.tokenize(text, add_bos, special)` for add_bos and special in {False, True}, and the bytes
of llama.cpp's detokenizer (`llama_detokenize`, nothing removed) for the special=False and
special=True ids. It also records per-token pieces (hashed, plus a sample), the end-of-generation
set, the control tokens and the model's special ids.

Variants check rules the real vocabulary does not exercise: vocabulary-only copies of the model
whose only change is one metadata key (`tokenizer.ggml.pre` = llama-bpe, qwen2, gpt-2, default
for BPE vocabularies; `tokenizer.ggml.add_space_prefix` flipped for SentencePiece ones), with
their add_bos=True ids and detokenized bytes. Writing those copies needs the `gguf` package,
which the llama-cpp-python venv may lack, so that step runs under `--gguf-python` (default
`python3`) by calling this script with `--write-variant`.

`--same-vocab-as GOLDEN` does not write a new file: it checks that llama.cpp reads this model's
vocabulary exactly as the one GOLDEN was made from (same digest over every token's text, score
and attributes, same special ids, same ids for every case) and records the model in GOLDEN's
`same_vocabulary` list.

Note: `Llama.detokenize` of llama-cpp-python returns b"" for tokens longer than 32 bytes, so
the low-level `llama_token_to_piece` / `llama_detokenize` are called with a growing buffer.
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
SPACE_PREFIX_KEY = "tokenizer.ggml.add_space_prefix"

# Hand-written edge cases (name, text): what SentencePiece and the special-token split do with
# spaces, newlines, characters without a token and special-token texts written in plain text.
EDGE_CASES = [
    ("empty", ""),
    ("one space", " "),
    ("two spaces", "  "),
    ("leading spaces", "   leading spaces"),
    ("trailing spaces", "trailing spaces   "),
    ("space runs", "a  b   c    d                                       e"),
    ("newline", "\n"),
    ("newline runs", "x\n\n\ny" + "\n" * 33 + "z"),
    ("crlf and tabs", "line1\r\nline2\rline3\n\tx\t\ty \t z"),
    ("space mark", "\u2581 literal \u2581\u2581marks\u2581"),
    ("emoji", "emoji \U0001F600 \U0001F44D\U0001F3FD "
              "\U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F1FA\U0001F1F8"),
    ("scripts", "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 "
                "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0939\u093f\u0928\u094d\u0926\u0940"),
    ("accents", "\u00dcn\u00efc\u00f6d\u00e9 fa\u00e7ade na\u0131\u0308ve e\u0301"),
    ("bytes without tokens", "\x00\x01\x04\x7f \U0010ffff \U00040000 \ue000 \ufffd"),
    ("byte token texts", "<0x41><0x0A> <0x"),
    ("gemma turns", "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"),
    ("gemma specials", "<bos><eos><pad><unk><mask> <unused0> <unused99> <start_of_image>"),
    ("space after special", "<start_of_turn> user <end_of_turn>  x"),
    ("html tokens", "<div><table><tr></tr></table></div> [multimodal]"),
    ("chatml", "<|im_start|>system\nYou are<|im_end|>\n<|im_start|>assistant\n"),
    ("endoftext", "a<|endoftext|>b<|endoftext|>"),
    ("fim", "<|fim_prefix|>def f(<|fim_suffix|>):<|fim_middle|>"
            "<|fim_pad|><|repo_name|><|file_sep|>"),
    ("long run a", "a" * 300),
    ("long run space", " " * 70),
    ("long run tab", "\t" * 40),
    ("code", "def f(x):\n    return x  # comment\n\nclass A:\n\tpass\n"),
    ("punctuation spacing",
     "Hello , world ! Is it ? yes . it 's ' ok ' I 'm we 're they 've he 'll"),
]

# Atoms of the second stress set: SentencePiece edge cases and several vocabularies' special
# token texts.
SPM_ATOMS = [
    " ", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\u2581", "\u2581\u2581", "a", "hello",
    " world", "The", "ing", "'s", "0", "123", "?", ".", ",", "!", "'", "\U0001F600",
    "\U0001F44D\U0001F3FD", "\u4e2d", "\u6587", "\u00e9", "\u0301", "\x00", "\x04", "\x7f",
    "\U00040000", "\ue000", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>",
    "<unk>", "<mask>", "<unused3>", "<start_of_image>", "<0x41>", "<0x", "<", ">", "<div>",
    "</div>", "[multimodal]", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|fim_pad|>",
]

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


def stress_strings(n: int, seed: int, atoms: list[str] = STRESS_ATOMS) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 14)
        out.append("".join(rng.choice(atoms) for _ in range(k)))
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


def write_variant(src: str, key: str, value: str, out: str) -> None:
    """Copy the metadata of `src` (no tensors) to `out`, with `key` set to `value` (a string
    for tokenizer.ggml.pre, "true"/"false" for a boolean key)."""
    import gguf

    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"]
    w = gguf.GGUFWriter(out, arch=bytes(arch.parts[arch.data[0]]).decode())

    def put_override():
        if key == "tokenizer.ggml.pre":
            w.add_string(key, value)
        else:
            w.add_bool(key, value == "true")

    done = False
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        if name == key:
            put_override()
            done = True
        elif vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                val = [field.parts[i][0].item() for i in field.data]
            w.add_key_value(name, val, vtype, sub_type=sub)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_key_value(name, bytes(field.parts[field.data[0]]).decode("utf-8"), vtype)
        else:
            w.add_key_value(name, field.parts[field.data[0]][0].item(), vtype)
    if not done:
        put_override()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class Vocab:
    """llama.cpp's view of one vocabulary (through llama-cpp-python's low-level API)."""

    def __init__(self, llama_cpp, path: str):
        self.lc = llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        self.vocab = self.llm._model.vocab
        self.n = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def piece(self, token: int, special: bool) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_token_to_piece(self.vocab, token, buf, size, 0, special)
            if n < 0:
                size = -n
                continue
            return buf.raw[:n]

    def detokenize(self, ids: list[int], special: bool) -> bytes:
        arr = (self.lc.llama_token * max(1, len(ids)))(*ids)
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lc.llama_detokenize(self.vocab, arr, len(ids), buf, size, False, special)
            if n < 0:
                size = -n
                continue
            return buf.raw[:n]

    def is_spm(self) -> bool:
        return self.lc.llama_vocab_type(self.vocab) == self.lc.LLAMA_VOCAB_TYPE_SPM

    def digest(self) -> str:
        """sha256 over every token's text, score and attribute bits, and the special ids."""
        lc, v = self.lc, self.vocab
        h = hashlib.sha256()
        for t in range(self.n):
            text = lc.llama_vocab_get_text(v, t)
            h.update(len(text).to_bytes(4, "little") + text)
            h.update(repr(float(lc.llama_vocab_get_score(v, t))).encode())
            h.update(int(lc.llama_vocab_get_attr(v, t)).to_bytes(4, "little"))
        h.update(json.dumps(self.specials(), sort_keys=True).encode())
        return h.hexdigest()

    def specials(self) -> dict:
        lc, v = self.lc, self.vocab
        return {
            "n_vocab": self.n,
            "bos_id": lc.llama_vocab_bos(v),
            "eos_id": lc.llama_vocab_eos(v),
            "eot_id": lc.llama_vocab_eot(v),
            "nl_id": lc.llama_vocab_nl(v),
            "add_bos": bool(lc.llama_vocab_get_add_bos(v)),
            "add_eos": bool(lc.llama_vocab_get_add_eos(v)),
            "eog_ids": [t for t in range(self.n) if lc.llama_vocab_is_eog(v, t)],
            "control_ids": [t for t in range(self.n) if lc.llama_vocab_is_control(v, t)],
        }


def all_texts(seed: int, n_stress: int) -> list[tuple[str, str]]:
    with open(CORPUS, encoding="utf-8", newline="") as f:
        corpus = f.read()
    texts: list[tuple[str, str]] = []
    for i, line in enumerate(corpus_lines(corpus)):
        texts.append((f"line {i + 1}", line))
    texts.append(("whole corpus", corpus))
    for i, s in enumerate(stress_strings(n_stress, seed)):
        texts.append((f"stress {i}", s))
    texts.extend((f"edge {name}", text) for name, text in EDGE_CASES)
    for i, s in enumerate(stress_strings(n_stress, seed + 1, SPM_ATOMS)):
        texts.append((f"spm stress {i}", s))
    return texts


# Conversations rendered with llama.cpp's built-in Gemma chat format (for Gemma vocabularies):
# the reference for lutllm's fallback Gemma template.
GEMMA_CHATS = [
    ([("user", "Hello")], True),
    ([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello! How can I help?"),
      ("user", "What is 2+2?")], True),
    ([("user", "  padded content \n\n")], False),
    ([("system", " S1 "), ("system", "S2"), ("user", "x"), ("assistant", " y "),
      ("user", "z")], True),
    ([("assistant", "first"), ("user", "then")], True),
    ([("user", "<start_of_turn> inside"), ("assistant", "ok")], False),
]


def gemma_chats(vocab: Vocab) -> list[dict]:
    lc = vocab.lc
    out = []
    for msgs, add_ass in GEMMA_CHATS:
        arr = (lc.llama_chat_message * len(msgs))(
            *[lc.llama_chat_message(r.encode(), c.encode()) for r, c in msgs])
        size = 1024
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_chat_apply_template(b"gemma", arr, len(msgs), add_ass, buf, size)
            if n < 0:
                raise SystemExit("llama_chat_apply_template failed for the gemma format")
            if n > size:
                size = n
                continue
            text = buf.raw[:n].decode("utf-8")
            break
        out.append({"messages": [{"role": r, "content": c} for r, c in msgs],
                    "add_generation_prompt": add_ass, "text": text,
                    "ids": vocab.tokenize(text, add_bos=True, special=True)})
    return out


def all_ids(vocab: Vocab, text: str) -> dict[str, list[int]]:
    return {f"add_bos={a},special={sp}": vocab.tokenize(text, add_bos=a, special=sp)
            for a in (False, True) for sp in (False, True)}


def write_json(golden: dict, out: str) -> None:
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".golden-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(to_json(golden))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


def same_vocab(llama_cpp, model: str, golden_path: str) -> int:
    """Check `model` against an existing golden; on success list it there as equivalent."""
    with open(golden_path, encoding="utf-8") as f:
        golden = json.load(f)
    vocab = Vocab(llama_cpp, model)
    digest = vocab.digest()
    if digest != golden["vocab_digest"]:
        print(f"error: {model} has another vocabulary than {golden['model_file']} "
              f"(digest {digest} vs {golden['vocab_digest']}); write a golden of its own",
              file=sys.stderr)
        return 1
    for k, v in vocab.specials().items():
        if golden[k] != v:
            print(f"error: {k} differs: {v} vs {golden[k]}", file=sys.stderr)
            return 1
    for case in golden["cases"]:
        if all_ids(vocab, case["text"]) != case["ids"]:
            print(f"error: {case['name']}: ids differ from the golden", file=sys.stderr)
            return 1
    entry = {"model_file": os.path.basename(model), "model_sha256": sha256_file(model)}
    same = [e for e in golden.get("same_vocabulary", []) if e["model_file"] != entry["model_file"]]
    golden["same_vocabulary"] = same + [entry]
    write_json(golden, golden_path)
    print(f"{model}: same vocabulary and ids for all {len(golden['cases'])} cases; "
          f"recorded in {golden_path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="GGUF file (only its vocabulary is read)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--stress", type=int, default=250, help="number of generated strings per set")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--same-vocab-as", metavar="GOLDEN",
                    help="check the model against this golden instead of writing one")
    ap.add_argument("--gguf-python", default="python3",
                    help="interpreter with the `gguf` package (writes the variant vocabularies)")
    ap.add_argument("--write-variant", nargs=3, metavar=("KEY", "VALUE", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.write_variant:
        write_variant(args.model, *args.write_variant)
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
    if args.same_vocab_as:
        return same_vocab(llama_cpp, args.model, args.same_vocab_as)

    vocab = Vocab(llama_cpp, args.model)
    n_vocab = vocab.n
    texts = all_texts(args.seed, args.stress)

    spm = vocab.is_spm()
    if spm:
        # llama.cpp's default for SentencePiece is true
        asp = vocab.llm.metadata.get(SPACE_PREFIX_KEY, "true") == "true"
        flipped = "false" if asp else "true"
        variant_keys = [(SPACE_PREFIX_KEY, flipped)]
    else:
        variant_keys = [("tokenizer.ggml.pre", pre) for pre in PRE_VARIANTS]
    variants = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for key, value in variant_keys:
            name = value if key == "tokenizer.ggml.pre" else f"{key.split('.')[-1]}={value}"
            path = os.path.join(tmpdir, "vocab-variant.gguf")
            subprocess.run([args.gguf_python, os.path.abspath(__file__), "--model", args.model,
                            "--write-variant", key, value, path], check=True)
            v = Vocab(llama_cpp, path)
            rows = []
            for _, t in texts:
                row = {}
                for sp in (False, True):
                    ids = v.tokenize(t, add_bos=True, special=sp)
                    row[f"special={sp}"] = ids
                    d = v.detokenize(ids, sp)
                    if d != b"".join(v.piece(i, sp) for i in ids):
                        # only where it is not just the pieces (those are checked by digest)
                        row[f"detok_hex special={sp}"] = d.hex()
                rows.append(row)
            variants[name] = rows
            del v

    cases = []
    n_py_detok_differs = n_pieces_differ = 0
    for k, (name, text) in enumerate(texts):
        ids = all_ids(vocab, text)
        detok = {}
        for special in (False, True):
            tok = ids[f"add_bos=False,special={special}"]
            d = vocab.detokenize(tok, special)
            by_piece = b"".join(vocab.piece(t, special) for t in tok)
            if d != by_piece:
                n_pieces_differ += 1  # (a leading space dropped, or spaces cleaned up)
                detok[f"pieces special={special}"] = by_piece.hex()
            if vocab.llm.detokenize(tok, special=special) != d:
                n_py_detok_differs += 1
            detok[f"special={special}"] = d.hex()
        case = {"name": name, "text": text, "ids": ids, "detok_hex": detok}
        key = "ids_by_variant" if spm else "ids_by_pre"
        case[key] = {vname: rows[k] for vname, rows in variants.items()}
        cases.append(case)

    pieces_false = [vocab.piece(t, False) for t in range(n_vocab)]
    pieces_true = [vocab.piece(t, True) for t in range(n_vocab)]
    sample = sorted(set(range(0, 300)) | {t for t in range(n_vocab) if len(pieces_true[t]) > 32}
                    | set(range(n_vocab - 50, n_vocab)))
    import importlib.metadata as md

    golden = {
        "about": "llama.cpp tokenizer output for one GGUF vocabulary; written by "
                 "tools/make_tokenizer_golden.py, do not edit by hand",
        "model_file": os.path.basename(args.model),
        "model_sha256": sha256_file(args.model),
        "llama_cpp_python_version": md.version("llama_cpp_python"),
        "vocab_type": "spm" if spm else "bpe",
        "stress_seed": args.seed,
        "variants_note": ("ids_by_pre / ids_by_variant: add_bos=True ids from vocabulary-only "
                          "copies of the model that differ only in the named metadata key, and "
                          "llama_detokenize's bytes for them where they are not just the "
                          "concatenated pieces"),
        **vocab.specials(),
        "vocab_digest": vocab.digest(),
        **({"gemma_chat_format": gemma_chats(vocab)}
           if str(vocab.llm.metadata.get("general.architecture", "")).startswith("gemma")
           else {}),
        "pieces_digest": {"special=False": pieces_digest(pieces_false),
                          "special=True": pieces_digest(pieces_true)},
        "pieces_sample_hex": {str(t): [pieces_false[t].hex(), pieces_true[t].hex()]
                              for t in sample},
        "cases": cases,
    }
    write_json(golden, args.out)
    print(f"wrote {args.out}: {len(cases)} cases; Llama.detokenize differed from "
          f"llama_detokenize on {n_py_detok_differs} of {2 * len(cases)} decodes; "
          f"llama_detokenize differed from the pieces on {n_pieces_differ}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
