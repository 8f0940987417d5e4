"""Tests for lutllm.tokenizer: ids and bytes against llama.cpp's own output, plus unit cases.

The references are independent of the code under test: tests/data/tokenizer_golden_smollm2.json
was written by tools/make_tokenizer_golden.py from llama-cpp-python, and the small synthetic
vocabularies below have their expected ids worked out by hand. No timing assertions here.
"""
import hashlib
import json
import os

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from lutllm.tokenizer import IncrementalDecoder, Tokenizer

DATA = os.path.join(os.path.dirname(__file__), "data")
GOLDEN = os.path.join(DATA, "tokenizer_golden_smollm2.json")
CORPUS = os.path.join(DATA, "tokenizer_corpus.txt")


# ----------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def smol_meta(smollm2_path, golden):
    from lutllm.gguf_file import GGUFFile

    h = hashlib.sha256()
    with open(smollm2_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    assert h.hexdigest() == golden["model_sha256"], (
        f"{smollm2_path} is not the file the tokenizer golden was made from "
        f"({golden['model_file']}, sha256 {golden['model_sha256']}); "
        "regenerate it with tools/make_tokenizer_golden.py")
    return GGUFFile(smollm2_path).metadata


@pytest.fixture(scope="module")
def smol(smol_meta):
    return Tokenizer.from_metadata(smol_meta)


def _combos(case):
    for key, ids in case["ids"].items():
        add_bos = "add_bos=True" in key
        special = "special=True" in key
        yield key, add_bos, special, ids


# ----------------------------------------------------------------------------------------
# against llama.cpp (golden file)
# ----------------------------------------------------------------------------------------


def test_corpus_file_is_what_the_golden_was_made_from(golden):
    with open(CORPUS, encoding="utf-8", newline="") as f:
        corpus = f.read()
    whole = [c for c in golden["cases"] if c["name"] == "whole corpus"]
    assert len(whole) == 1 and whole[0]["text"] == corpus
    lines = corpus.split("\n")[:-1]
    line_cases = [c["text"] for c in golden["cases"] if c["name"].startswith("line ")]
    assert line_cases == lines
    assert len(lines) >= 40


def test_encode_matches_llama_cpp_exactly(smol, golden):
    failures = []
    for case in golden["cases"]:
        for key, add_bos, special, want in _combos(case):
            got = smol.encode(case["text"], add_special=add_bos, parse_special=special)
            if got != want:
                failures.append(f"{case['name']} [{key}] {case['text'][:60]!r}: "
                                f"got {got[:12]}..., llama.cpp {want[:12]}...")
    assert not failures, f"{len(failures)} mismatches:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2", "default"])
def test_other_pre_tokenizers_match_llama_cpp(smol_meta, golden, pre):
    # same vocabulary and merges, only tokenizer.ggml.pre differs (as in the golden tool)
    meta = dict(smol_meta)
    meta["tokenizer.ggml.pre"] = pre
    tok = Tokenizer.from_metadata(meta)
    failures = []
    for case in golden["cases"]:
        row = case["ids_by_pre"][pre]
        for special in (False, True):
            want = row[f"special={special}"]
            got = tok.encode(case["text"], add_special=True, parse_special=special)
            if got != want:
                failures.append(f"{case['name']} [special={special}] {case['text'][:60]!r}")
                continue
            # llama_detokenize's bytes are stored where they are not just the pieces
            # (llama.cpp's space clean-up of these pre-tokenizers)
            key = f"detok_hex special={special}"
            if key in row:
                if tok.detokenize(want, special=special) != bytes.fromhex(row[key]):
                    failures.append(f"{case['name']} [{key}] {case['text'][:60]!r}")
            elif tok.detokenize(want, special=special) != tok.decode_bytes(want, special):
                failures.append(f"{case['name']} [detokenize special={special}] cleaned up")
    assert not failures, f"{pre}: {len(failures)} mismatches:\n" + "\n".join(failures[:20])


def test_space_clean_up_is_exercised_by_the_golden(golden):
    # the clean-up check above must not pass vacuously
    cleaned = {pre for case in golden["cases"] for pre, row in case["ids_by_pre"].items()
               if "detok_hex special=False" in row}
    assert {"llama-bpe", "gpt-2", "default"} <= cleaned
    assert "qwen2" not in cleaned  # qwen2 does no clean-up in llama.cpp


def test_decode_matches_llama_cpp_detokenize(smol, golden, smol_missing_bytes):
    for case in golden["cases"]:
        for special in (False, True):
            ids = case["ids"][f"add_bos=False,special={special}"]
            want = bytes.fromhex(case["detok_hex"][f"special={special}"])
            assert smol.decode_bytes(ids, special=special) == want, case["name"]
            assert smol.detokenize(ids, special=special) == want, case["name"]
            assert smol.decode(ids, special=special) == want.decode("utf-8", "replace")
        # with special tokens shown, the text comes back exactly (when it can: bytes
        # without a token are dropped by the tokenizer)
        if not smol_missing_bytes.intersection(case["text"].encode("utf-8")):
            ids = case["ids"]["add_bos=False,special=True"]
            assert smol.decode(ids, special=True) == case["text"]


def _digest(pieces):
    h = hashlib.sha256()
    for p in pieces:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.hexdigest()


def test_every_token_piece_matches_llama_cpp(smol, golden):
    n = golden["n_vocab"]
    assert smol.n_vocab == n
    for tid, (hex_false, hex_true) in golden["pieces_sample_hex"].items():
        assert smol.token_bytes(int(tid)) == bytes.fromhex(hex_false), tid
        assert smol.token_bytes(int(tid), special=True) == bytes.fromhex(hex_true), tid
    assert (_digest(smol.token_bytes(t) for t in range(n))
            == golden["pieces_digest"]["special=False"])
    assert (_digest(smol.token_bytes(t, special=True) for t in range(n))
            == golden["pieces_digest"]["special=True"])


def test_special_ids_and_end_of_generation_set(smol, golden):
    assert smol.bos_id == golden["bos_id"] == 1
    assert smol.eos_id == golden["eos_id"] == 2
    assert smol.add_bos == golden["add_bos"]
    assert smol.add_eos == golden["add_eos"]
    # llama.cpp's set includes <reponame> (4): it takes that text as a fill-in-middle
    # "repo" token, and those end generation too.
    assert smol.eog_ids == set(golden["eog_ids"]) == {0, 2, 4}
    assert [t for t in range(smol.n_vocab) if smol.is_control(t)] == golden["control_ids"]
    assert smol.encode("\n", add_special=False) == [golden["nl_id"]]


# ----------------------------------------------------------------------------------------
# properties on the real vocabulary
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_missing_bytes(smol_meta):
    """Byte values with no single-byte token in the vocabulary (from the raw token list)."""
    tokens = set(smol_meta["tokenizer.ggml.tokens"])
    return {b for b in range(256) if _gpt2_byte_char(b) not in tokens}


def test_vocabulary_lacks_some_bytes_and_llama_cpp_drops_them(smol, smol_missing_bytes):
    # SmolLM2 has no token for these bytes; llama.cpp silently drops them (the golden
    # stress cases hold "\x04" and U+40000, whose lead byte 0xF1 is missing).
    assert {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2} <= smol_missing_bytes
    assert smol.decode(smol.encode("a\x04b")) == "ab"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=st.text(max_size=60))
def test_byte_level_round_trip(smol, smol_missing_bytes, s):
    # byte-level BPE is lossless when every byte of the text has a token
    assume(not smol_missing_bytes.intersection(s.encode("utf-8")))
    assert smol.decode(smol.encode(s, parse_special=False)) == s
    assert smol.decode(smol.encode(s, parse_special=True), special=True) == s


def test_special_text_is_plain_text_unless_parse_special(smol):
    s = "<|im_start|>user\nHi<|im_end|>"
    plain = smol.encode(s, parse_special=False)
    assert 1 not in plain and 2 not in plain
    parsed = smol.encode(s, parse_special=True)
    assert parsed[0] == 1 and parsed[-1] == 2
    assert smol.decode(parsed) == "user\nHi"  # control tokens hidden by default
    assert smol.decode(parsed, special=True) == s


def _longest_valid_prefix(b: bytes) -> str:
    """Independent oracle: the longest prefix of b that is complete, valid UTF-8."""
    for cut in range(len(b), -1, -1):
        try:
            return b[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def test_incremental_decoder_never_splits_a_character(smol):
    text = "Emoji 👨‍👩‍👧 and 中文 and 한국어 and é̃ done"
    ids = smol.encode(text)
    # the vocabulary really does cut some of these characters across tokens
    assert any(_is_partial(smol.token_bytes(t)) for t in ids)
    dec = IncrementalDecoder(smol)
    emitted = ""
    raw = b""
    for t in ids:
        chunk = dec.feed(t)
        raw += smol.token_bytes(t)
        emitted += chunk
        assert "\ufffd" not in chunk
        assert emitted == _longest_valid_prefix(raw)
    emitted += dec.flush()
    assert emitted == text


def _is_partial(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_incremental_decoder_flush_releases_a_cut_character(smol):
    ids = smol.encode("龘")
    assert len(ids) == 3  # one token per UTF-8 byte in this vocabulary
    dec = smol.incremental_decoder()
    assert dec.feed(ids[0]) == ""
    assert dec.feed(ids[1]) == ""
    assert dec.flush() == "\ufffd"  # an incomplete tail at the end of the stream
    assert dec.feed_many(ids) + dec.flush() == "龘"
    # a byte that can never start a character comes out at once as U+FFFD
    assert dec.feed(ids[1]) + dec.feed(ids[0]) == "\ufffd"


def test_incremental_decoder_special_flag(smol):
    ids = smol.encode("<|im_start|>hi", parse_special=True)
    assert smol.incremental_decoder().feed_many(ids) == "hi"
    assert smol.incremental_decoder(special=True).feed_many(ids) == "<|im_start|>hi"


@pytest.mark.parametrize("bad", [-1, 49152, 10**12])
def test_invalid_token_ids_are_rejected_by_name(smol, bad):
    with pytest.raises(ValueError, match=str(bad)):
        smol.decode([5, bad])
    with pytest.raises(ValueError, match=str(bad)):
        smol.token_bytes(bad)
    with pytest.raises(ValueError, match=str(bad)):
        smol.incremental_decoder().feed(bad)


def test_non_integer_token_id_rejected(smol):
    with pytest.raises(ValueError, match="1.5"):
        smol.decode([1.5])
    with pytest.raises(ValueError, match="'x'"):
        smol.decode(["x"])


def test_each_distinct_word_is_merged_once(smol, monkeypatch):
    # the per-word cache is what keeps long texts fast; count the BPE runs it lets through
    smol._cache.clear()
    calls = []
    orig = type(smol)._bpe_word

    def counting(self, word):
        calls.append(word)
        return orig(self, word)

    monkeypatch.setattr(type(smol), "_bpe_word", counting)
    text = "the cat and the hat and the bat " * 500
    ids = smol.encode(text)
    # words: "the", " cat", " and", " the", " hat", " bat" and the final " "
    assert len(calls) == len(set(calls)) == 7
    assert smol.decode(ids) == text


# ----------------------------------------------------------------------------------------
# synthetic vocabularies (expected ids worked out by hand)
# ----------------------------------------------------------------------------------------


def _gpt2_byte_char(b: int) -> str:
    """GPT-2 byte->char map written from its definition (independent of the module)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(
        range(0xAE, 0xFF + 1))
    if b in printable:
        return chr(b)
    others = [x for x in range(256) if x not in printable]
    return chr(256 + others.index(b))


def _meta(tokens, merges, types=None, pre="gpt-2", **extra):
    m = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": list(tokens),
        "tokenizer.ggml.merges": list(merges),
    }
    if types is not None:
        m["tokenizer.ggml.token_type"] = list(types)
    for k, v in extra.items():  # short names are tokenizer.ggml.* keys
        m[k if "." in k else "tokenizer.ggml." + k] = v
    return m


SPACE = _gpt2_byte_char(0x20)


def test_byte_map_landmarks():
    assert _gpt2_byte_char(0x20) == "Ġ" and _gpt2_byte_char(0x0A) == "Ċ"
    assert _gpt2_byte_char(ord("a")) == "a"


def test_bpe_merges_lowest_rank_first_then_leftmost():
    # vocabulary: single letters, then merged tokens
    tokens = ["a", "b", "c", "ab", "bc", "abc", SPACE, SPACE + "a"]
    merges = ["b c", "a b", "a bc", SPACE + " a"]
    tok = Tokenizer.from_metadata(_meta(tokens, merges, bos_token_id=0, eos_token_id=0))
    ids = {t: i for i, t in enumerate(tokens)}
    # "abc": (b,c) has rank 0 -> a|bc, then (a,bc) rank 2 -> abc
    assert tok.encode("abc", add_special=False) == [ids["abc"]]
    # "abab": (a,b) twice, leftmost first -> ab|ab (no rule joins them)
    assert tok.encode("abab", add_special=False) == [ids["ab"], ids["ab"]]
    # " ab" is one word for the GPT-2 split: (a,b) has rank 1 < rank 3 of (Ġ,a), and no
    # rule joins Ġ with ab
    assert tok.encode(" ab", add_special=False) == [ids[SPACE], ids["ab"]]
    # " ac": only (Ġ,a) applies
    assert tok.encode(" ac", add_special=False) == [ids[SPACE + "a"], ids["c"]]


def test_bpe_queue_order_is_llama_cpp_not_merge_all_occurrences():
    # With a rank that makes a new pair cheaper than the remaining copies of the current
    # one, llama.cpp (one bigram at a time, cheapest first) gives "yzy"+"z"; tokenizers that
    # merge every copy of the best pair at once would give "yz"+"yz".
    tokens = ["y", "z", "yz", "yzy"]
    merges = ["yz y", "y z"]
    tok = Tokenizer.from_metadata(_meta(tokens, merges, bos_token_id=0, eos_token_id=0))
    assert tok.encode("yzyz", add_special=False) == [3, 1]


def test_special_tokens_partition_and_types():
    # types: 1 normal, 3 control, 4 user-defined
    tokens = ["<s>", "<ctl>", "<user>", "x", "<", ">", "c", "t", "l", "s", "u", "e", "r", "/"]
    types = [3, 3, 4] + [1] * 11
    tok = Tokenizer.from_metadata(_meta(tokens, [], types=types, bos_token_id=0,
                                        eos_token_id=0, **{"tokenizer.ggml.add_bos_token": True}))
    i = {t: k for k, t in enumerate(tokens)}
    # control tokens are text unless parse_special; user-defined are always split out
    assert tok.encode("x<ctl>x<user>", add_special=False) == [
        i["x"], i["<"], i["c"], i["t"], i["l"], i[">"], i["x"], i["<user>"]]
    assert tok.encode("x<ctl>x<user>", add_special=False, parse_special=True) == [
        i["x"], i["<ctl>"], i["x"], i["<user>"]]
    # add_special prepends BOS when add_bos_token is set
    assert tok.encode("x", add_special=True) == [0, i["x"]]
    assert tok.encode("", add_special=True) == [0]
    assert tok.encode("", add_special=False) == []
    # decode hides control tokens unless asked; user-defined tokens always render
    assert tok.decode([i["<ctl>"], i["x"], i["<user>"]]) == "x<user>"
    assert tok.decode([i["<ctl>"], i["x"]], special=True) == "<ctl>x"


def test_longest_special_token_wins():
    tokens = ["<a>", "<a><b>", "<b>", "z"]
    tok = Tokenizer.from_metadata(_meta(tokens, [], types=[3, 3, 3, 1], bos_token_id=0,
                                        eos_token_id=0))
    assert tok.encode("<a><b><a>z", add_special=False, parse_special=True) == [1, 0, 3]


def test_eog_detected_by_token_text_and_metadata():
    tokens = ["<|endoftext|>", "<|im_end|>", "<|eot_id|>", "hello", "<|fim_pad|>", "<x>"]
    tok = Tokenizer.from_metadata(_meta(tokens, [], types=[1, 1, 1, 1, 1, 3],
                                        eos_token_id=5))
    assert tok.eog_ids == {0, 1, 2, 4, 5}
    # tokens that end generation are treated as control tokens even if typed normal
    assert tok.decode([1, 3]) == "hello"


def test_add_bos_defaults_follow_the_pre_tokenizer():
    tokens = ["a", "b"]
    assert Tokenizer.from_metadata(_meta(tokens, [], pre="llama-bpe", bos_token_id=0)).add_bos
    assert not Tokenizer.from_metadata(_meta(tokens, [], pre="qwen2", bos_token_id=0)).add_bos
    explicit = _meta(tokens, [], pre="llama-bpe", bos_token_id=0,
                     **{"tokenizer.ggml.add_bos_token": False})
    assert not Tokenizer.from_metadata(explicit).add_bos


def test_unknown_pre_tokenizer_is_named():
    with pytest.raises(ValueError, match="'no-such-pre'"):
        Tokenizer.from_metadata(_meta(["a"], [], pre="no-such-pre"))


def test_unimplemented_vocab_types_are_named():
    with pytest.raises(NotImplementedError, match="Unigram"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "t5",
                                 "tokenizer.ggml.tokens": ["a"]})


def test_unknown_model_and_missing_keys_are_named():
    with pytest.raises(ValueError, match="'martian'"):
        Tokenizer.from_metadata({"tokenizer.ggml.model": "martian"})
    with pytest.raises(ValueError, match="tokenizer.ggml.model"):
        Tokenizer.from_metadata({})
    m = _meta(["a"], [])
    del m["tokenizer.ggml.merges"]
    with pytest.raises(ValueError, match="tokenizer.ggml.merges"):
        Tokenizer.from_metadata(m)
    m = _meta(["a"], [])
    del m["tokenizer.ggml.tokens"]
    with pytest.raises(ValueError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_metadata(m)
    with pytest.raises(ValueError, match="token_type"):
        Tokenizer.from_metadata(_meta(["a", "b"], [], types=[1]))


def test_encode_rejects_bytes():
    tok = Tokenizer.from_metadata(_meta(["a"], [], bos_token_id=0, eos_token_id=0))
    with pytest.raises(TypeError, match="bytes"):
        tok.encode(b"a")


def test_digit_grouping_llama_bpe_versus_qwen2():
    # llama-bpe groups digits by up to three before BPE, qwen2 splits every digit
    tokens = ["1", "2", "3", "4", "12", "123"]
    merges = ["1 2", "12 3"]
    llama = Tokenizer.from_metadata(_meta(tokens, merges, pre="llama-bpe", bos_token_id=0,
                                          **{"tokenizer.ggml.add_bos_token": False}))
    qwen = Tokenizer.from_metadata(_meta(tokens, merges, pre="qwen2", bos_token_id=0))
    assert llama.encode("1234", add_special=False) == [5, 3]  # "123" "4"
    assert qwen.encode("1234", add_special=False) == [0, 1, 2, 3]


def test_llama_bpe_takes_whole_words_that_are_tokens():
    # "abc" is a token no merge can build: llama-bpe (ignore_merges) uses it directly
    tokens = ["a", "b", "c", "abc"]
    llama = Tokenizer.from_metadata(_meta(tokens, [], pre="llama-bpe", bos_token_id=0,
                                          **{"tokenizer.ggml.add_bos_token": False}))
    gpt2 = Tokenizer.from_metadata(_meta(tokens, [], pre="gpt-2", bos_token_id=0))
    assert llama.encode("abc", add_special=False) == [3]
    assert gpt2.encode("abc", add_special=False) == [0, 1, 2]


@pytest.mark.parametrize("pre, text, words", [
    # worked out from each pre-tokenizer's regex by hand
    ("llama-bpe", "Hello world's 12345!!\n\n  x",
     ["Hello", " world", "'s", " ", "123", "45", "!!\n\n", " ", " x"]),
    ("llama-bpe", "I'M ok\t\tyes \n", ["I", "'M", " ok", "\t", "\tyes", " \n"]),
    ("qwen2", "ab 12\r\n", ["ab", " ", "1", "2", "\r\n"]),
    ("gpt-2", "I'M ok  x 12", ["I", "'", "M", " ok", " ", " x", " 12"]),
    ("smollm", "x 12  a", ["x", " ", "1", "2", " ", " a"]),
    ("default", "a+=12345;", ["a", "+=", "123", "45", ";"]),
])
def test_pre_tokenizer_word_splits(pre, text, words):
    from lutllm.tokenizer import PRE_TOKENIZERS, _split_words

    assert _split_words(text, PRE_TOKENIZERS[pre]) == words
