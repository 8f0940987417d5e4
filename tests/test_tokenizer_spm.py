"""Unit tests for the SentencePiece tokenizer on a small hand-made vocabulary.

The expected ids are worked out by hand from llama.cpp's SentencePiece rules (highest-scoring
pair first, ties leftmost, merges into any token of the vocabulary, byte fallback, the space
prefix after special tokens); the same vocabulary written as a GGUF gives these ids in
llama.cpp too. The real vocabularies are checked against llama.cpp in
test_tokenizer_models.py.
"""
import pytest

from lutllm.tokenizer import SPMTokenizer, Tokenizer

NORMAL, UNKNOWN, CONTROL, USER, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# (text, score, type); the byte tokens sit at ids 4..259
_HEAD = [("<unk>", 0.0, UNKNOWN), ("<s>", 0.0, CONTROL), ("</s>", 0.0, CONTROL),
         ("<user>", 0.0, USER)]
_TAIL = [("\u2581", -10.0, NORMAL), ("a", -1.0, NORMAL), ("b", -1.0, NORMAL),
         ("c", -1.0, NORMAL), ("ab", -5.0, NORMAL), ("bc", -4.0, NORMAL),
         ("\u2581a", -3.0, NORMAL), ("aa", -2.0, NORMAL), ("<", -1.0, NORMAL),
         ("x", -1.0, NORMAL), (">", -1.0, NORMAL), ("<x", -2.0, NORMAL),
         ("<x>", -3.0, CONTROL), ("<unused0>", 0.0, UNUSED), ("q", -1.0, NORMAL)]
SP, A, B, C, AB, BC, SP_A, AA, LT, X, GT, LT_X, LT_X_GT, UNUSED0, Q = range(260, 275)


def _byte(b: int) -> int:
    return 4 + b


def _meta(add_space_prefix=True, drop_bytes=(), tail=_TAIL, **extra):
    toks = _HEAD + [("<0x%02X>" % b, 0.0, BYTE) for b in range(256) if b not in drop_bytes]
    toks += tail
    m = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [t for t, _, _ in toks],
        "tokenizer.ggml.scores": [s for _, s, _ in toks],
        "tokenizer.ggml.token_type": [y for _, _, y in toks],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }
    m.update(extra)
    return m


@pytest.fixture(scope="module")
def spm():
    return Tokenizer.from_metadata(_meta())


@pytest.fixture(scope="module")
def spm_nosp():
    return Tokenizer.from_metadata(_meta(add_space_prefix=False))


def test_model_type_and_defaults(spm):
    assert isinstance(spm, SPMTokenizer)
    assert spm.add_bos and not spm.add_eos  # llama.cpp's defaults for SentencePiece
    assert spm.add_space_prefix
    assert spm.eog_ids == {2}


def test_highest_score_pair_merges_first(spm, spm_nosp):
    # "abc": (b,c) scores -4 and beats (a,b) at -5 -> a|bc
    assert spm_nosp.encode("abc", add_special=False) == [A, BC]
    # with the space prefix: (▁,a) at -3 goes first, then (b,c); no token joins ▁a and bc
    assert spm.encode("abc", add_special=False) == [SP_A, BC]
    assert spm.encode("abc") == [1, SP_A, BC]


def test_equal_scores_merge_leftmost_first(spm_nosp, spm):
    assert spm_nosp.encode("aaa", add_special=False) == [AA, A]
    # "▁aaa": (▁,a) -3 loses to (a,a) -2 at positions 1 and 2: the left one wins
    assert spm.encode("aaa", add_special=False) == [SP, AA, A]


def test_merges_reach_control_token_texts_as_llama_cpp_does(spm, spm_nosp):
    # "<x>" is a control token; without parse_special its text is still built by merges
    # ("<"+"x" -> "<x", "<x"+">" -> "<x>"), because llama.cpp merges into any token
    assert spm_nosp.encode("<x>", add_special=False) == [LT_X_GT]
    assert spm.encode("<x>", add_special=False) == [SP, LT_X_GT]
    assert spm.encode("<x>", add_special=False, parse_special=True) == [LT_X_GT]


def test_byte_fallback(spm, spm_nosp):
    assert spm_nosp.encode("é", add_special=False) == [_byte(0xC3), _byte(0xA9)]
    assert spm.encode("é", add_special=False) == [SP, _byte(0xC3), _byte(0xA9)]
    # "s" has no token: "<s>" as plain text is <, byte 0x73, >
    assert spm_nosp.encode("<s>a", add_special=False) == [LT, _byte(0x73), GT, A]
    assert spm.encode("<s>a", add_special=True, parse_special=True) == [1, 1, SP_A]


def test_lone_surrogate_is_written_as_bytes(spm_nosp):
    assert spm_nosp.encode("a\ud800b", add_special=False) == [
        A, _byte(0xED), _byte(0xA0), _byte(0x80), B]


def test_space_prefix_after_special_tokens(spm, spm_nosp):
    # user-defined tokens are always cut out; the text after any special token gets a space
    assert spm.encode("<user>a", add_special=False) == [3, SP_A]
    assert spm.encode("a<user>", add_special=False) == [SP_A, 3]
    assert spm.encode("a <user> b", add_special=False) == [SP_A, SP, 3, SP, SP, B]
    assert spm_nosp.encode("a <user> b", add_special=False) == [A, SP, 3, SP, B]
    assert spm_nosp.encode(" a", add_special=False) == [SP_A]
    assert spm.encode(" a", add_special=False) == [SP, SP_A]
    assert spm.encode("", add_special=True) == [1]
    assert spm.encode("", add_special=False) == []


def test_pieces_and_decoding(spm):
    assert spm.token_bytes(SP_A) == b" a"  # ▁ renders as a space
    assert spm.token_bytes(_byte(0xC3)) == b"\xc3"
    assert spm.token_bytes(3) == b"<user>"  # user-defined: its text, always
    assert spm.token_bytes(LT_X_GT) == b"" and spm.token_bytes(LT_X_GT, True) == b"<x>"
    assert spm.token_bytes(0) == b"" and spm.token_bytes(0, True) == b"<unk>"
    assert spm.token_bytes(UNUSED0) == b"" == spm.token_bytes(UNUSED0, True)
    ids = spm.encode("aé bc")
    assert spm.decode(ids) == " aé bc"  # the pieces, as streamed
    assert spm.decode(ids, special=True) == "<s> aé bc"


def test_detokenize_drops_the_space_prefix_like_llama_detokenize(spm, spm_nosp):
    assert spm.detokenize([SP_A, BC]) == b"abc"
    assert spm_nosp.detokenize([SP_A, BC]) == b" abc"
    # a hidden BOS is the first token: it uses up the stripping, the space stays
    assert spm.detokenize([1, SP_A]) == b" a"
    assert spm.detokenize([1, SP_A], special=True) == b"<s> a"
    # removing the BOS (remove_special) also turns the stripping off in llama.cpp
    assert spm.detokenize([1, SP_A], remove_special=True) == b" a"
    # EOS is only removed when the model adds one itself (add_eos)
    assert spm.detokenize([SP_A, 2], special=True, remove_special=True) == b"a</s>"
    with_eos = Tokenizer.from_metadata(_meta(**{"tokenizer.ggml.add_eos_token": True}))
    assert with_eos.detokenize([SP_A, 2], special=True, remove_special=True) == b"a"
    assert spm.detokenize([3, SP_A]) == b"<user> a"
    assert spm.detokenize([LT_X_GT, Q, 0, C]) == b"qc"
    assert spm.detokenize([LT_X_GT, Q, 0, C], special=True) == b"<x>q<unk>c"


def test_missing_byte_tokens_raise_a_clear_error():
    tok = Tokenizer.from_metadata(_meta(add_space_prefix=False, drop_bytes=(0xC3,)))
    assert tok.encode("abc", add_special=False) == [A - 1, BC - 1]  # ids shift by one
    with pytest.raises(ValueError, match="<0xC3>"):
        tok.encode("é")  # llama.cpp aborts here


def test_repeated_and_empty_token_texts():
    # a repeated text is found under its last id (llama.cpp's lookup); an empty text never
    tail = _TAIL + [("bc", -4.0, NORMAL), ("", 5.0, NORMAL)]
    tok = Tokenizer.from_metadata(_meta(add_space_prefix=False, tail=tail))
    n = tok.n_vocab
    assert tok.encode("abc", add_special=False) == [A, n - 2]
    assert tok.token_bytes(BC) == b"bc"  # the first copy still decodes


def test_scores_default_to_zero_and_ties_go_leftmost():
    m = _meta(add_space_prefix=False)
    del m["tokenizer.ggml.scores"]
    tok = Tokenizer.from_metadata(m)
    # all scores equal: (a,b) is leftmost, then nothing joins ab and c
    assert tok.encode("abc", add_special=False) == [AB, C]


@pytest.mark.parametrize("bad, match", [
    ({"tokenizer.ggml.scores": [0.0]}, "scores"),
    ({"tokenizer.ggml.scores": "nope"}, "scores"),
    ({"tokenizer.ggml.scores": ["x"] * 300}, "scores"),
    ({"tokenizer.ggml.add_space_prefix": "yes"}, "add_space_prefix"),
])
def test_bad_metadata_is_named(bad, match):
    m = _meta()
    m.update(bad)
    if bad.get("tokenizer.ggml.scores") == ["x"] * 300:
        m["tokenizer.ggml.scores"] = ["x"] * len(m["tokenizer.ggml.tokens"])
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_metadata(m)
