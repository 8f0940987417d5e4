"""Tokenizers of the registry's Gemma 3 and Qwen2.5-Coder vocabularies against llama.cpp.

The references are tests/data/tokenizer_golden_gemma3.json and
tests/data/tokenizer_golden_qwen25coder.json, written by tools/make_tokenizer_golden.py from
llama-cpp-python on the same GGUF files (the corpus lines, hand-written edge cases and seeded
stress strings; ids with and without BOS and special-token parsing, detokenized bytes,
every token's piece, the end-of-generation set). Gemma 3 has a SentencePiece vocabulary of
262144 tokens; the two Qwen2.5-Coder models share one byte-level BPE vocabulary (the golden
tool checked that llama.cpp reads them identically), so the 1.5B model is checked against
the 0.5B golden.
"""
import hashlib
import json
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from lutllm.gguf_file import GGUFFile
from lutllm.models import get_entry
from lutllm.tokenizer import BPETokenizer, SPMTokenizer, Tokenizer

DATA = os.path.join(os.path.dirname(__file__), "data")

# registry name -> (golden file, fixture giving the model path, tokenizer class)
MODELS = {
    "gemma3-270m": ("tokenizer_golden_gemma3.json", "gemma3_path", SPMTokenizer),
    "qwen2.5-coder-0.5b-instruct": ("tokenizer_golden_qwen25coder.json", "qwen05_path",
                                    BPETokenizer),
}

_golden_cache: dict = {}
_tok_cache: dict = {}


def _golden(name):
    if name not in _golden_cache:
        with open(os.path.join(DATA, MODELS[name][0]), encoding="utf-8") as f:
            _golden_cache[name] = json.load(f)
    return _golden_cache[name]


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    """(registry name, golden, metadata, tokenizer) for each model."""
    name = request.param
    golden = _golden(name)
    # the pulled file was verified against the registry's sha256; the golden must have been
    # made from that same file
    assert golden["model_sha256"] == get_entry(name).sha256, (
        f"{MODELS[name][0]} was made from another file than the registry's {name}; "
        "regenerate it with tools/make_tokenizer_golden.py")
    path = request.getfixturevalue(MODELS[name][1])
    if name not in _tok_cache:
        meta = GGUFFile(path).metadata
        _tok_cache[name] = (meta, Tokenizer.from_metadata(meta))
    meta, tok = _tok_cache[name]
    assert isinstance(tok, MODELS[name][2])
    return name, golden, meta, tok


def _encode_failures(tok, golden):
    failures = []
    for case in golden["cases"]:
        for key, want in case["ids"].items():
            got = tok.encode(case["text"], add_special="add_bos=True" in key,
                             parse_special="special=True" in key)
            if got != want:
                failures.append(f"{case['name']} [{key}] {case['text'][:50]!r}: "
                                f"got {got[:10]}..., llama.cpp {want[:10]}...")
    return failures


def test_golden_covers_the_cases_it_should(model):
    name, golden, _, _ = model
    names = [c["name"] for c in golden["cases"]]
    assert len([n for n in names if n.startswith("line ")]) >= 40
    assert sum(n.startswith("stress ") for n in names) == 250
    assert sum(n.startswith("spm stress ") for n in names) == 250
    texts = {c["name"]: c["text"] for c in golden["cases"]}
    assert texts["edge empty"] == ""
    assert "<start_of_turn>" in texts["edge gemma turns"]


def test_encode_matches_llama_cpp_exactly(model):
    name, golden, _, tok = model
    failures = _encode_failures(tok, golden)
    assert not failures, f"{name}: {len(failures)} mismatches:\n" + "\n".join(failures[:20])


def test_special_text_is_parsed_only_when_asked(model):
    # a sanity check on the golden itself: the chat markers are single tokens only with
    # special=True, so the parse_special switch is really exercised
    name, golden, _, tok = model
    case = next(c for c in golden["cases"]
                if c["name"] == ("edge gemma turns" if name.startswith("gemma") else "edge chatml"))
    marker = "<start_of_turn>" if name.startswith("gemma") else "<|im_start|>"
    mid = tok.token_id(marker)
    assert mid in case["ids"]["add_bos=False,special=True"]
    assert mid not in case["ids"]["add_bos=False,special=False"]


def test_detokenize_matches_llama_cpp(model):
    name, golden, _, tok = model
    for case in golden["cases"]:
        for special in (False, True):
            ids = case["ids"][f"add_bos=False,special={special}"]
            want = bytes.fromhex(case["detok_hex"][f"special={special}"])
            assert tok.detokenize(ids, special=special) == want, case["name"]
            # these vocabularies add no space prefix: the streamed pieces are the same bytes
            assert tok.decode_bytes(ids, special=special) == want, case["name"]
        # every byte has a token in both vocabularies: with special tokens shown, the text
        # comes back exactly (except that SentencePiece reads U+2581 as its space mark)
        if golden["vocab_type"] == "spm" and "\u2581" in case["text"]:
            continue
        ids = case["ids"]["add_bos=False,special=True"]
        assert tok.decode(ids, special=True) == case["text"], case["name"]


def test_variants_match_llama_cpp(model):
    """The same vocabulary with one metadata key changed, as the golden tool wrote it
    (Gemma: add_space_prefix switched on; Qwen: other pre-tokenizers)."""
    name, golden, meta, _ = model
    key = "ids_by_variant" if golden["vocab_type"] == "spm" else "ids_by_pre"
    variants = golden["cases"][0][key]
    assert variants
    for vname in variants:
        m = dict(meta)
        if key == "ids_by_pre":
            m["tokenizer.ggml.pre"] = vname
        else:
            k, v = vname.split("=")
            m["tokenizer.ggml." + k] = v == "true"
        tok = Tokenizer.from_metadata(m)
        failures = []
        for case in golden["cases"]:
            row = case[key][vname]
            for special in (False, True):
                want = row[f"special={special}"]
                got = tok.encode(case["text"], add_special=True, parse_special=special)
                if got != want:
                    failures.append(f"{case['name']} [special={special}] {case['text'][:50]!r}")
                    continue
                dkey = f"detok_hex special={special}"
                want_bytes = (bytes.fromhex(row[dkey]) if dkey in row
                              else tok.decode_bytes(want, special))
                if tok.detokenize(want, special=special) != want_bytes:
                    failures.append(f"{case['name']} [{dkey}]")
        assert not failures, f"{name} {vname}: {len(failures)} mismatches:\n" + \
            "\n".join(failures[:20])


def test_space_prefix_variant_really_differs():
    # Gemma's add_space_prefix=true variant must change the ids, or the test above would
    # prove nothing about the leading-space rule
    golden = _golden("gemma3-270m")
    rows = [c["ids_by_variant"]["add_space_prefix=true"] for c in golden["cases"]]
    assert sum(r["special=False"] != c["ids"]["add_bos=True,special=False"]
               for r, c in zip(rows, golden["cases"])) > 100


def _digest(pieces):
    h = hashlib.sha256()
    for p in pieces:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def test_every_token_piece_matches_llama_cpp(model):
    name, golden, _, tok = model
    n = golden["n_vocab"]
    assert tok.n_vocab == n
    for tid, (hex_false, hex_true) in golden["pieces_sample_hex"].items():
        assert tok.token_bytes(int(tid)) == bytes.fromhex(hex_false), tid
        assert tok.token_bytes(int(tid), special=True) == bytes.fromhex(hex_true), tid
    assert _digest(tok.token_bytes(t) for t in range(n)) == golden["pieces_digest"]["special=False"]
    assert (_digest(tok.token_bytes(t, special=True) for t in range(n))
            == golden["pieces_digest"]["special=True"])


def test_special_ids_and_end_of_generation_set(model):
    name, golden, _, tok = model
    assert tok.bos_id == golden["bos_id"]
    assert tok.eos_id == golden["eos_id"]
    # With several end-of-turn texts in the vocabulary (Qwen: <|endoftext|>, <|im_end|>),
    # llama.cpp takes the first in its hash map's order, which is not reproducible: this
    # takes the lowest id. Either way both end generation (the EOG set below is exact).
    assert golden["eot_id"] in tok.eog_ids and tok.eot_id in tok.eog_ids
    if name.startswith("gemma"):
        assert tok.eot_id == golden["eot_id"]
    assert tok.add_bos == golden["add_bos"]
    assert tok.add_eos == golden["add_eos"]
    assert tok.eog_ids == set(golden["eog_ids"])
    assert [t for t in range(tok.n_vocab) if tok.is_control(t)] == golden["control_ids"]
    if golden["vocab_type"] == "spm":
        assert tok.token_id("<0x0A>") == golden["nl_id"]  # llama.cpp's newline is the byte
    else:
        assert tok.encode("\n", add_special=False) == [golden["nl_id"]]


def test_end_of_generation_tokens_by_name(model):
    name, golden, _, tok = model
    eog_texts = {tok.token_text(t) for t in tok.eog_ids}
    if name.startswith("gemma"):
        # <end_of_turn> ends a chat turn, <eos> the text; llama.cpp also counts "</s>"
        assert eog_texts == {"<eos>", "<end_of_turn>", "</s>"}
        assert tok.eot_id == tok.token_id("<end_of_turn>")
    else:
        assert {"<|im_end|>", "<|endoftext|>"} <= eog_texts
        assert tok.eos_id == tok.token_id("<|im_end|>")
        # fill-in-middle pad / repo / file separators end generation too, as in llama.cpp
        assert {"<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"} <= eog_texts


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.text(max_size=80))
def test_gemma_round_trip_is_lossless(gemma3_path, s):
    # byte fallback makes SentencePiece lossless, apart from U+2581 (its space mark)
    assume("\u2581" not in s)
    if "gemma3-270m" not in _tok_cache:
        meta = GGUFFile(gemma3_path).metadata
        _tok_cache["gemma3-270m"] = (meta, Tokenizer.from_metadata(meta))
    tok = _tok_cache["gemma3-270m"][1]
    for parse_special in (False, True):
        ids = tok.encode(s, add_special=True, parse_special=parse_special)
        assert ids[0] == tok.bos_id
        assert tok.decode(ids[1:], special=True) == s
        assert tok.detokenize(ids, special=True) == (tok.token_text(ids[0]) + s).encode()


# ----------------------------------------------------------------------------------------
# Qwen2.5-Coder 1.5B: same vocabulary as the 0.5B
# ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_qwen15_vocabulary_is_the_qwen05_one_and_matches_llama_cpp(qwen15_path, qwen05_path):
    golden = _golden("qwen2.5-coder-0.5b-instruct")
    entry = get_entry("qwen2.5-coder-1.5b-instruct")
    # the golden tool compared llama.cpp's reading of both vocabularies and all their ids
    assert {"model_file": entry.filename, "model_sha256": entry.sha256} in \
        golden["same_vocabulary"]
    m15 = GGUFFile(qwen15_path).metadata
    m05 = GGUFFile(qwen05_path).metadata
    keys = sorted(k for k in m05 if k.startswith("tokenizer.ggml."))
    assert keys == sorted(k for k in m15 if k.startswith("tokenizer.ggml."))
    for k in keys:
        a, b = m05[k], m15[k]
        a = a.tolist() if hasattr(a, "tolist") else a
        b = b.tolist() if hasattr(b, "tolist") else b
        assert a == b, k
    tok = Tokenizer.from_metadata(m15)
    failures = _encode_failures(tok, golden)
    assert not failures, "\n".join(failures[:20])
