"""Tokenizers built from GGUF metadata, matching llama.cpp's tokenization id for id.

Pure Python apart from `sentencepiece`, which does the merging for SentencePiece
vocabularies. Implements byte-level BPE (`tokenizer.ggml.model == "gpt2"`) and SentencePiece
(`"llama"`); other vocab types are declared but not implemented yet. This module does not
read GGUF files: it takes the metadata dict a loader produced.

Pipeline for `encode` (the same order llama.cpp uses):
  1. special-token partition: control / unknown tokens (only when `parse_special`) and
     user-defined tokens (always) are cut out of the text, longest token text first;
  2. BPE: each remaining text fragment is split into words by the pre-tokenizer named in
     `tokenizer.ggml.pre` (a list of regexes applied one after another, each splitting the
     pieces left by the previous one); each word is mapped byte by byte to the GPT-2
     printable alphabet and merged by BPE, always merging the lowest-rank adjacent pair
     first (ties: leftmost first);
  3. SentencePiece: a fragment gets a leading space when `add_space_prefix` is set and it
     opens the text or follows a special token, spaces become U+2581, and the characters
     are merged highest-score pair first (ties: leftmost first) by a sentencepiece
     processor built in memory from the vocabulary; characters left without a token are
     written as byte tokens <0xNN>.

Unicode classes (\\p{L}, \\p{N}, ...) come from the `regex` module's Unicode database;
characters added in newer Unicode versions than that database may be classified
differently from llama.cpp's tables. Whitespace is the Unicode White_Space set, as in
llama.cpp.
"""

from __future__ import annotations

import array
import codecs
import heapq
import sys
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import regex

__all__ = [
    "Tokenizer",
    "BPETokenizer",
    "SPMTokenizer",
    "IncrementalDecoder",
    "TokenType",
    "PRE_TOKENIZERS",
]


# --------------------------------------------------------------------------------------
# Token types (values of tokenizer.ggml.token_type) and the attributes derived from them.
# --------------------------------------------------------------------------------------


class TokenType:
    """Values stored in `tokenizer.ggml.token_type`."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Attribute bits (a token can gain CONTROL when its text marks it as end-of-turn etc.).
_A_UNDEFINED = 1 << 0
_A_UNKNOWN = 1 << 1
_A_UNUSED = 1 << 2
_A_NORMAL = 1 << 3
_A_CONTROL = 1 << 4
_A_USER_DEFINED = 1 << 5
_A_BYTE = 1 << 6

_TYPE_TO_ATTR = {
    TokenType.UNDEFINED: _A_UNDEFINED,
    TokenType.NORMAL: _A_NORMAL,
    TokenType.UNKNOWN: _A_UNKNOWN,
    TokenType.CONTROL: _A_CONTROL,
    TokenType.USER_DEFINED: _A_USER_DEFINED,
    TokenType.UNUSED: _A_UNUSED,
    TokenType.BYTE: _A_BYTE,
}

# Tokens hidden by decode(special=False): llama.cpp's token_to_piece skips these.
_A_HIDDEN = _A_CONTROL | _A_UNKNOWN

# Token texts llama.cpp treats specially, whatever the metadata says (it detects them by
# text because older conversions did not record them).
_EOT_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<end_of_utterance>",
})
_EOM_TEXTS = frozenset({"<|eom_id|>"})
_FIM_PAD_TEXTS = frozenset({"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"})
_FIM_REP_TEXTS = frozenset({"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"})
_FIM_SEP_TEXTS = frozenset({"<|file_sep|>"})
_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>",
    "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>",
    "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>",
    "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})
# Always rendered as text (treated as user-defined), as llama.cpp does for these.
_FORCE_USER_DEFINED_TEXTS = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})


# --------------------------------------------------------------------------------------
# Pre-tokenizers
# --------------------------------------------------------------------------------------

# Unicode White_Space (what llama.cpp's `\s` means), as a character-class body.
_WS = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"

# GPT-2 word split. llama.cpp's hand-written matcher for this pattern also falls back to a
# plain whitespace run (`\s+`), which the original GPT-2 pattern has as its last branch.
_RE_GPT2 = (
    "'s|'t|'re|'ve|'m|'ll|'d"
    "| ?\\p{L}+| ?\\p{N}+"
    f"| ?[^{_WS}\\p{{L}}\\p{{N}}]+"
    f"|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
)

# Llama-3 split; the contractions are case-insensitive; digits are grouped by up to 3.
_RE_LLAMA3 = (
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
    "|\\p{N}{1,3}"
    f"| ?[^{_WS}\\p{{L}}\\p{{N}}]+[\\r\\n]*"
    f"|[{_WS}]*[\\r\\n]+"
    f"|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
)

# Qwen2 split: like Llama-3 but every digit is its own word.
_RE_QWEN2 = _RE_LLAMA3.replace("\\p{N}{1,3}", "\\p{N}", 1)


@dataclass(frozen=True)
class PreTokenizer:
    """How text fragments are cut into words before BPE, and the vocab flags that go with it.

    `regexes` are applied in order; each one splits every piece left by the previous one
    into its matches and the gaps between matches (a gap is kept as a piece of its own).
    """

    name: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False  # a word that is itself a token is emitted without merging
    add_bos: bool = False  # default for add_bos when metadata does not say
    clean_spaces: bool = True  # llama_detokenize's clean-up (not applied by token pieces)


_GPT2_LIKE = (_RE_GPT2,)
_STARCODER_LIKE = ("\\p{N}", _RE_GPT2)
_DEFAULT = (
    "[\\p{P}\\$\\+<=>\\^~\\|]+",
    _RE_GPT2,
    "\\p{N}+",
    "[0-9][0-9][0-9]",
)

PRE_TOKENIZERS: dict[str, PreTokenizer] = {}


def _register(names: Iterable[str], regexes: tuple[str, ...], **flags) -> None:
    for n in names:
        PRE_TOKENIZERS[n] = PreTokenizer(name=n, regexes=regexes, **flags)


_register(["default"], _DEFAULT)
_register(["gpt-2", "phi-2", "mpt", "olmo"], _GPT2_LIKE)
_register(["starcoder", "refact", "codeshell", "exaone", "minerva-7b"], _STARCODER_LIKE)
_register(["smollm", "command-r"], _STARCODER_LIKE, clean_spaces=False)
_register(["llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral"], (_RE_LLAMA3,),
          ignore_merges=True, add_bos=True)
_register(["dbrx", "smaug-bpe"], (_RE_LLAMA3,))
_register(["qwen2", "deepseek-r1-qwen"], (_RE_QWEN2,), clean_spaces=False)
_register(["stablelm2"], (_RE_QWEN2,))

_COMPILED: dict[str, regex.Pattern] = {}


def _compiled(pattern: str) -> regex.Pattern:
    c = _COMPILED.get(pattern)
    if c is None:
        c = _COMPILED[pattern] = regex.compile(pattern)
    return c


def _split_words(text: str, pre: PreTokenizer) -> list[str]:
    """Cut `text` into words: each regex splits every current piece into matches and gaps."""
    pieces = [text]
    for pattern in pre.regexes:
        rx = _compiled(pattern)
        out: list[str] = []
        for piece in pieces:
            pos = 0
            for m in rx.finditer(piece):
                s, e = m.span()
                if s == e:
                    continue
                if s > pos:
                    out.append(piece[pos:s])
                out.append(piece[s:e])
                pos = e
            if pos < len(piece):
                out.append(piece[pos:])
        pieces = out
    return pieces


# --------------------------------------------------------------------------------------
# GPT-2 byte <-> printable character mapping
# --------------------------------------------------------------------------------------


def _byte_to_char_table() -> list[str]:
    """Byte b -> the printable character standing for it in byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the remaining 68 bytes (controls, space,
    0x7F-0xA0, 0xAD) are given the code points 256, 257, ... in increasing byte order.
    """
    keep = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table = []
    extra = 0
    for b in range(256):
        if b in keep:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


_BYTE_TO_CHAR = _byte_to_char_table()
_CHAR_TO_BYTE = {c: b for b, c in enumerate(_BYTE_TO_CHAR)}
# str.translate table: latin-1 decoded byte string -> mapped characters
_LATIN1_TO_MAPPED = {b: c for b, c in enumerate(_BYTE_TO_CHAR)}


def _to_utf8(text: str) -> bytes:
    # lone surrogates become their 3-byte forms, as llama.cpp's decoder would read them
    return text.encode("utf-8", "surrogatepass")


def _byte_encode(word: str) -> str:
    return _to_utf8(word).decode("latin-1").translate(_LATIN1_TO_MAPPED)


# --------------------------------------------------------------------------------------
# Metadata helpers
# --------------------------------------------------------------------------------------

_K = "tokenizer.ggml."


def _meta_int(meta: dict, key: str) -> int | None:
    v = meta.get(key)
    if v is None:
        return None
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"metadata {key!r} must be an integer, got {v!r}") from None


def _meta_bool(meta: dict, key: str) -> bool | None:
    v = meta.get(key)
    if v is None:
        return None
    kind = getattr(getattr(v, "dtype", None), "kind", None)
    if isinstance(v, (bool, int)) or kind in ("b", "i", "u"):
        return bool(v)  # python or numpy bool / integer
    raise ValueError(f"metadata {key!r} must be a boolean, got {v!r}")


def _meta_str_list(meta: dict, key: str) -> list[str]:
    v = meta.get(key)
    if v is None:
        raise ValueError(f"metadata key {key!r} is missing")
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise ValueError(f"metadata {key!r} must be a list of strings, got {type(v).__name__}")
    out = list(v)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise ValueError(f"metadata {key!r}[{i}] is {type(s).__name__}, expected str")
    return out


def _clean_spaces(text: bytes) -> bytes:
    """llama.cpp's detokenizer clean-up, three in-place passes over the bytes: drop the space
    before ? ! . , ; turn " ' " into "'"; drop the space before 's 'm 're 've."""
    buf = bytearray(text)

    def one_pass(step) -> None:
        nonlocal buf
        n = len(buf)
        total = 1 if n else 0
        i = 1
        while i < n:
            total, i = step(buf, n, total, i)
            i += 1
        del buf[total:]

    def punct(b, n, total, i):
        x = b[i]
        if b[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        b[total] = x
        return total + 1, i

    def lone_quote(b, n, total, i):
        x = b[i]
        if x == 0x27 and i + 1 < n and b[i - 1] == 0x20 and b[i + 1] == 0x20:
            total -= 1  # the space before
            i += 1
            b[i] = 0  # the space after is skipped (and no longer reads as a space)
        b[total] = x
        return total + 1, i

    def contraction(b, n, total, i):
        x = b[i]
        if b[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            x1 = b[i + 1]
            if x1 in b"sm":
                total -= 1
            elif i + 2 < n and (x1, b[i + 2]) in ((0x72, 0x65), (0x76, 0x65)):  # 're 've
                total -= 1
        b[total] = x
        return total + 1, i

    one_pass(punct)
    one_pass(lone_quote)
    one_pass(contraction)
    return bytes(buf)


# --------------------------------------------------------------------------------------
# Tokenizer interface and shared machinery
# --------------------------------------------------------------------------------------


class Tokenizer:
    """Common interface of all tokenizers; build one with `Tokenizer.from_metadata(meta)`.

    The base class reads the vocabulary, token types and special ids, finds the
    end-of-generation tokens, cuts special tokens out of text and renders ids back to
    bytes. A vocabulary type is added by subclassing and registering the class under its
    `tokenizer.ggml.model` value in `Tokenizer._MODELS` (and removing it from `_NOT_YET`):
    the subclass passes its llama.cpp defaults for BOS/EOS to `__init__` and supplies
    `_encode_text` (one special-free text fragment -> ids) and `_piece_bytes` (token id ->
    rendered bytes); SentencePiece also overrides `_encode_fragments`, since it prefixes a
    space to text that follows a special token.
    """

    #: whether a space is put before text that opens the input or follows a special token,
    #: and dropped again from the first piece by detokenize() (SentencePiece)
    add_space_prefix: bool = False
    #: whether detokenize() applies llama.cpp's clean-up of spaces before punctuation
    clean_spaces: bool = False

    #: tokenizer.ggml.model value -> implementing class; filled in below
    _MODELS: dict[str, type["Tokenizer"]] = {}
    #: models llama.cpp knows that this package does not implement yet
    _NOT_YET = {
        "bert": "WordPiece ('bert') tokenizers are not implemented yet",
        "t5": "Unigram ('t5') tokenizers are not implemented yet",
        "rwkv": "RWKV tokenizers are not implemented yet",
        "plamo2": "PLaMo-2 tokenizers are not implemented yet",
        "gemma4": "Gemma-4 tokenizers are not implemented yet",
        "none": "models without a vocabulary ('none') cannot tokenize text",
    }

    # ---- construction -----------------------------------------------------------------

    @staticmethod
    def from_metadata(meta: dict) -> "Tokenizer":
        """Build the tokenizer described by GGUF metadata (`tokenizer.ggml.*` keys)."""
        model = meta.get(_K + "model")
        if model is None:
            raise ValueError(f"metadata key {_K + 'model'!r} is missing")
        if not isinstance(model, str):
            raise ValueError(f"metadata {_K + 'model'!r} must be a string, got {model!r}")
        cls = Tokenizer._MODELS.get(model)
        if cls is not None:
            return cls(meta)
        if model in Tokenizer._NOT_YET:
            raise NotImplementedError(
                f"{_K}model = {model!r}: {Tokenizer._NOT_YET[model]}")
        raise ValueError(f"unknown tokenizer model {_K}model = {model!r}")

    def __init__(self, meta: dict, *, default_bos: int | None, default_eos: int | None,
                 default_add_bos: bool, default_add_eos: bool) -> None:
        tokens = _meta_str_list(meta, _K + "tokens")
        if not tokens:
            raise ValueError(f"metadata {_K + 'tokens'!r} is empty")
        n = len(tokens)
        types = meta.get(_K + "token_type")
        if types is None:
            types = [TokenType.NORMAL] * n
        else:
            types = types.tolist() if hasattr(types, "tolist") else [int(t) for t in types]
            if len(types) < n:
                raise ValueError(
                    f"metadata {_K + 'token_type'!r} has {len(types)} entries for {n} tokens")
        attrs = [_TYPE_TO_ATTR.get(t, _A_UNDEFINED) for t in types[:n]]

        self._tokens = tokens
        self._attrs = attrs
        self._token_to_id: dict[str, int] = {}
        for i, t in enumerate(tokens):
            self._token_to_id[t] = i  # a repeated text maps to its last id, as in llama.cpp

        def special(key: str, default: int | None) -> int | None:
            if default is not None and not (0 <= default < n):
                default = None
            v = _meta_int(meta, _K + key)
            if v is None:
                return default
            if not (0 <= v < n):
                warnings.warn(f"metadata {_K + key!r} = {v} is outside the vocabulary "
                              f"(0..{n - 1}); using {default}", stacklevel=3)
                return default
            return v

        self.bos_id: int | None = special("bos_token_id", default_bos)
        self.eos_id: int | None = special("eos_token_id", default_eos)
        self.eot_id: int | None = special("eot_token_id", None)
        self.eom_id: int | None = special("eom_token_id", None)
        self.unk_id: int | None = special("unknown_token_id", None)
        self.pad_id: int | None = special("padding_token_id", None)
        fim_pad = special("fim_pad_token_id", None)
        fim_rep = special("fim_rep_token_id", None)
        fim_sep = special("fim_sep_token_id", None)

        add_bos = _meta_bool(meta, _K + "add_bos_token")
        add_eos = _meta_bool(meta, _K + "add_eos_token")
        self.add_bos: bool = default_add_bos if add_bos is None else add_bos
        self.add_eos: bool = default_add_eos if add_eos is None else add_eos

        # Texts that mark end-of-turn and fill-in-middle tokens (detected by text when the
        # metadata has no id for them). Every token found this way becomes a control token.
        def find(texts: frozenset[str]) -> int | None:
            ids = [self._token_to_id[t] for t in texts if t in self._token_to_id]
            if not ids:
                return None
            i = min(ids)
            self._attrs[i] |= _A_CONTROL
            return i

        if self.eot_id is None:
            self.eot_id = find(_EOT_TEXTS)
        if self.eom_id is None:
            self.eom_id = find(_EOM_TEXTS)
        if fim_pad is None:
            fim_pad = find(_FIM_PAD_TEXTS)
        if fim_rep is None:
            fim_rep = find(_FIM_REP_TEXTS)
        if fim_sep is None:
            fim_sep = find(_FIM_SEP_TEXTS)

        eog: set[int] = {i for i in (fim_pad, fim_rep, fim_sep) if i is not None}
        for text in _EOG_TEXTS:
            i = self._token_to_id.get(text)
            if i is not None:
                eog.add(i)
                self._attrs[i] |= _A_CONTROL
        for i in (self.eos_id, self.eot_id, self.eom_id):
            if i is not None:
                eog.add(i)
        texts = {tokens[i]: i for i in eog}
        # When both "<|return|>" and "<|call|>" (or "<|calls|>" and "<|flush|>") end a
        # generation, "<|end|>" only ends a message: it is not an end of generation.
        if "<|end|>" in texts and (
            ("<|return|>" in texts and "<|call|>" in texts)
            or ("<|calls|>" in texts and "<|flush|>" in texts)
        ):
            end = texts["<|end|>"]
            eog.discard(end)
            self._attrs[end] = _A_USER_DEFINED
        # With these markers present, "</s>" is an ordinary token.
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            s = texts["</s>"]
            eog.discard(s)
            self._attrs[s] = _A_NORMAL
        for text in _FORCE_USER_DEFINED_TEXTS:
            i = self._token_to_id.get(text)
            if i is not None:
                self._attrs[i] = _A_USER_DEFINED
        self.eog_ids: frozenset[int] = frozenset(eog)

        # Special tokens that are cut out of text before pre-tokenization, longest first
        # (ties by id so the order is reproducible).
        special_ids = [
            i for i, a in enumerate(self._attrs)
            if a & (_A_CONTROL | _A_USER_DEFINED | _A_UNKNOWN)
        ]
        special_ids.sort(key=lambda i: (-len(_to_utf8(tokens[i])), i))
        self._special_ids: list[int] = special_ids
        # (text, id) in that order: all of them (parse_special), and the user-defined ones
        # only (always cut out)
        self._special_all = [(tokens[i], i) for i in special_ids if tokens[i]]
        self._special_plain = [(t, i) for t, i in self._special_all
                               if not self._attrs[i] & (_A_CONTROL | _A_UNKNOWN)]

        self._pieces: list[bytes] | None = None  # built lazily by _piece_table()

    # ---- public API -------------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self._tokens)

    def token_text(self, token_id: int) -> str:
        """The token's string as stored in the vocabulary (not decoded)."""
        self._check_id(token_id)
        return self._tokens[token_id]

    def token_id(self, text: str) -> int | None:
        """Id of the token whose vocabulary string is exactly `text`, or None."""
        return self._token_to_id.get(text)

    def is_control(self, token_id: int) -> bool:
        self._check_id(token_id)
        return bool(self._attrs[token_id] & _A_HIDDEN)

    def is_eog(self, token_id: int) -> bool:
        return token_id in self.eog_ids

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Text -> token ids.

        add_special: prepend BOS / append EOS when the model asks for them
        (`tokenizer.ggml.add_bos_token` / `add_eos_token`); like llama-cpp-python's add_bos.
        parse_special: recognise control-token texts such as "<|im_start|>" written in
        `text` (llama-cpp-python's `special`); user-defined tokens are always recognised.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() takes a str, got {type(text).__name__}")
        out: list[int] = []
        if add_special and self.add_bos:
            if self.bos_id is None:
                raise ValueError("the model asks for a BOS token but defines none")
            out.append(self.bos_id)
        if text:
            self._encode_fragments(self._partition(text, parse_special), out)
        if add_special and self.add_eos:
            if self.eos_id is None:
                raise ValueError("the model asks for an EOS token but defines none")
            out.append(self.eos_id)
        return out

    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """Bytes a token renders to. Control / unknown tokens render as b"" unless `special`.

        A token may hold only part of a multi-byte UTF-8 character.
        """
        self._check_id(token_id)
        if not special and self._attrs[token_id] & _A_HIDDEN:
            return b""
        return self._piece_table()[token_id]

    def decode_bytes(self, ids: Sequence[int], special: bool = False) -> bytes:
        """Concatenated token bytes (what llama.cpp's token_to_piece gives, token by token)."""
        table = self._piece_table()
        attrs = self._attrs
        n = len(table)
        parts = []
        for t in ids:
            t = self._as_id(t, n)
            if not special and attrs[t] & _A_HIDDEN:
                continue
            parts.append(table[t])
        return b"".join(parts)

    def decode(self, ids: Sequence[int], special: bool = False) -> str:
        """Token ids -> text. Invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD.

        Control tokens are skipped unless `special`. No clean-up of spaces is done: the text
        is the concatenation of token pieces, as llama.cpp streams it.
        """
        return self.decode_bytes(ids, special).decode("utf-8", "replace")

    def detokenize(self, ids: Sequence[int], special: bool = False,
                   remove_special: bool = False) -> bytes:
        """Whole-sequence text bytes, as llama.cpp's `llama_detokenize` writes them.

        Unlike `decode_bytes` (the streamed pieces), this drops one leading space of the
        first piece when the tokenizer adds a space prefix (SentencePiece), applies
        llama.cpp's space clean-up for pre-tokenizers that ask for it, and with
        `remove_special` leaves out a leading BOS / trailing EOS the model adds itself.
        """
        table = self._piece_table()
        attrs = self._attrs
        n = len(table)
        ids = [self._as_id(t, n) for t in ids]
        strip_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            strip_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for k, t in enumerate(ids):
            if not special and attrs[t] & _A_HIDDEN:
                continue  # (a hidden first token still uses up the space stripping)
            p = table[t]
            if k == 0 and strip_space and p[:1] == b" ":
                p = p[1:]
            parts.append(p)
        out = b"".join(parts)
        return _clean_spaces(out) if self.clean_spaces else out

    def incremental_decoder(self, special: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, special=special)

    # ---- internals --------------------------------------------------------------------

    def _as_id(self, t, n: int) -> int:
        try:
            i = int(t)
        except (TypeError, ValueError):
            raise ValueError(f"token id {t!r} is not an integer") from None
        if i != t or not (0 <= i < n):
            raise ValueError(f"token id {t!r} is out of range for a vocabulary of {n} tokens")
        return i

    def _check_id(self, token_id) -> None:
        self._as_id(token_id, len(self._tokens))

    def _partition(self, text: str, parse_special: bool) -> list:
        """Split text into str fragments and int special-token ids (llama.cpp's order)."""
        # Only tokens that occur in the whole text can occur in a fragment of it; this one
        # pass of substring tests keeps vocabularies with thousands of special tokens fast.
        todo = self._special_all if parse_special else self._special_plain
        present = [(t, i) for t, i in todo if t in text]
        frags: list = [text]
        for stext, sid in present:
            # fast reject: the token appears in no raw fragment
            if len(frags) > 1 and not any(isinstance(f, str) and stext in f for f in frags):
                continue
            new: list = []
            for f in frags:
                if not isinstance(f, str) or stext not in f:
                    new.append(f)
                    continue
                parts = f.split(stext)
                for k, p in enumerate(parts):
                    if k:
                        new.append(sid)
                    if p:
                        new.append(p)
            frags = new
        return frags

    def _encode_fragments(self, frags: list, out: list[int]) -> None:
        """Append the ids of partitioned text: ints are special-token ids, strs are text."""
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
            else:
                self._encode_text(frag, out)

    def _piece_table(self) -> list[bytes]:
        if self._pieces is None:
            self._pieces = [self._piece_bytes(i) for i in range(len(self._tokens))]
        return self._pieces

    def _encode_text(self, text: str, out: list[int]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _piece_bytes(self, token_id: int) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------
# Byte-level BPE ("gpt2")
# --------------------------------------------------------------------------------------


class BPETokenizer(Tokenizer):
    """Byte-level BPE (`tokenizer.ggml.model == "gpt2"`), as llama.cpp tokenizes it."""

    _CACHE_LIMIT = 200_000  # words; the cache is dropped when it grows past this

    def __init__(self, meta: dict) -> None:
        pre_name = meta.get(_K + "pre")
        if pre_name is None or pre_name == "":
            warnings.warn(f"metadata {_K + 'pre'!r} is missing; using the 'default' "
                          "pre-tokenizer (tokenization quality may suffer)", stacklevel=3)
            pre_name = "default"
        if not isinstance(pre_name, str):
            raise ValueError(f"metadata {_K + 'pre'!r} must be a string, got {pre_name!r}")
        pre = PRE_TOKENIZERS.get(pre_name)
        if pre is None:
            raise ValueError(
                f"unknown pre-tokenizer {_K}pre = {pre_name!r}; supported: "
                + ", ".join(sorted(PRE_TOKENIZERS)))
        self.pre = pre
        self.clean_spaces = pre.clean_spaces
        super().__init__(meta, default_bos=11, default_eos=11,
                         default_add_bos=pre.add_bos, default_add_eos=False)

        merges = _meta_str_list(meta, _K + "merges")
        ranks: dict[tuple[str, str], int] = {}
        for r, m in enumerate(merges):
            pos = m.find(" ", 1)
            if pos < 0:
                first, second = "", ""  # a malformed rule: can never apply
            else:
                first, second = m[:pos], m[pos + 1:]
            ranks.setdefault((first, second), r)  # keep the first (lowest) rank
        self._ranks = ranks
        self._cache: dict[str, tuple[int, ...]] = {}

    # one fragment of plain text
    def _encode_text(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for word in _split_words(text, self.pre):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(_byte_encode(word))
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> tuple[int, ...]:
        vocab = self._token_to_id
        if self.pre.ignore_merges:
            t = vocab.get(word)
            if t is not None:
                return (t,)
        syms = list(word)  # one symbol per (byte-mapped) character
        n = len(syms)
        if n > 1:
            ranks = self._ranks
            nxt = list(range(1, n)) + [-1]
            prv = list(range(-1, n - 1))
            heap: list[tuple[int, int, int, str]] = []
            for i in range(n - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None:
                    heap.append((r, i, i + 1, syms[i] + syms[i + 1]))
            heapq.heapify(heap)
            while heap:
                r, left, right, merged = heapq.heappop(heap)
                a, b = syms[left], syms[right]
                # stale entries: a side was merged away, or the pair changed since pushed
                if not a or not b or nxt[left] != right or a + b != merged:
                    continue
                syms[left] = merged
                syms[right] = ""
                nr = nxt[right]
                nxt[left] = nr
                if nr >= 0:
                    prv[nr] = left
                pl = prv[left]
                if pl >= 0:
                    rr = ranks.get((syms[pl], merged))
                    if rr is not None:
                        heapq.heappush(heap, (rr, pl, left, syms[pl] + merged))
                if nr >= 0:
                    rr = ranks.get((merged, syms[nr]))
                    if rr is not None:
                        heapq.heappush(heap, (rr, left, nr, merged + syms[nr]))
        ids = []
        for s in syms:
            if not s:
                continue
            t = vocab.get(s)
            if t is not None:
                ids.append(t)
                continue
            # Not in the vocabulary (inconsistent merges): llama.cpp falls back to looking
            # up each UTF-8 byte of the symbol alone, which only single-byte chars can pass.
            for ch in s:
                if ord(ch) < 0x80:
                    t = vocab.get(ch)
                    if t is not None:
                        ids.append(t)
        return tuple(ids)

    def _piece_bytes(self, token_id: int) -> bytes:
        text = self._tokens[token_id]
        a = self._attrs[token_id]
        if a & (_A_HIDDEN | _A_USER_DEFINED):
            return _to_utf8(text)
        if a & _A_NORMAL:
            out = bytearray()
            for ch in text:
                b = _CHAR_TO_BYTE.get(ch)
                if b is not None:
                    out.append(b)
                else:
                    # a character outside the byte alphabet: llama.cpp writes a marker
                    # holding its UTF-8 bytes in hex followed by the whole token text
                    out += b"[UNK_BYTE_0x" + _to_utf8(ch).hex().encode() + _to_utf8(text) + b"]"
            return bytes(out)
        if a & _A_BYTE:
            b = _CHAR_TO_BYTE.get(text)
            if b is not None:
                return bytes([b])
            return b""
        return b""  # unused / undefined tokens render as nothing


Tokenizer._MODELS["gpt2"] = BPETokenizer


# --------------------------------------------------------------------------------------
# SentencePiece ("llama")
# --------------------------------------------------------------------------------------

# sentencepiece's ModelProto, written directly as protobuf wire format (field numbers from
# sentencepiece_model.proto), so that the `protobuf` package is not needed.
_PB_PIECES, _PB_TRAINER_SPEC, _PB_NORMALIZER_SPEC = 1, 2, 3  # ModelProto
_PB_PIECE, _PB_SCORE, _PB_TYPE = 1, 2, 3  # ModelProto.SentencePiece
_PB_MODEL_TYPE, _PB_VOCAB_SIZE, _PB_BYTE_FALLBACK = 3, 4, 35  # TrainerSpec
_PB_UNK_ID, _PB_BOS_ID, _PB_EOS_ID, _PB_PAD_ID, _PB_UNK_PIECE = 40, 41, 42, 43, 45
_PB_NAME, _PB_ADD_DUMMY_PREFIX, _PB_REMOVE_EXTRA_WS, _PB_ESCAPE_WS = 1, 3, 4, 5  # NormalizerSpec
_SP_NORMAL, _SP_UNKNOWN, _SP_BYTE = 1, 2, 6  # SentencePiece.Type
_SP_MODEL_BPE = 2
_SP_MAX_PIECE_BYTES = 8000  # sentencepiece rejects longer pieces

_SPACE_MARK = "\u2581"  # what SentencePiece vocabularies write for a space
_SURROGATES = regex.compile("[\ud800-\udfff]")


def _pb_varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32 values are written as 64-bit two's complement
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _pb_len(field: int, payload: bytes) -> bytes:
    return _pb_varint(field << 3 | 2) + _pb_varint(len(payload)) + payload


def _pb_int(field: int, value: int) -> bytes:
    return _pb_varint(field << 3) + _pb_varint(value)


class SPMTokenizer(Tokenizer):
    """SentencePiece (`tokenizer.ggml.model == "llama"`), as llama.cpp tokenizes it.

    llama.cpp merges the characters of a fragment pairwise, always the adjacent pair whose
    concatenation is the highest-scoring token (ties: leftmost), over every token of the
    vocabulary whatever its type, and writes characters left without a token as the byte
    tokens <0xNN>. A sentencepiece BPE processor does the same when every token is given to
    it as a normal piece with its score, the byte tokens as byte pieces and byte fallback is
    on, so one is built in memory from the metadata (tokens, scores, types) at load time.
    Normalization is off in it: the space rules are applied here, as llama.cpp does.
    """

    def __init__(self, meta: dict) -> None:
        import sentencepiece

        super().__init__(meta, default_bos=1, default_eos=2,
                         default_add_bos=True, default_add_eos=False)
        if self.unk_id is None and len(self._tokens) > 0:
            self.unk_id = 0  # llama.cpp's default for this vocabulary type
        asp = _meta_bool(meta, _K + "add_space_prefix")
        self.add_space_prefix = True if asp is None else asp
        n = len(self._tokens)

        scores = meta.get(_K + "scores")
        if scores is None:
            values = [0.0] * n
        else:
            if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
                raise ValueError(f"metadata {_K + 'scores'!r} must be a list of numbers, "
                                 f"got {type(scores).__name__}")
            values = scores.tolist() if hasattr(scores, "tolist") else list(scores)
            if len(values) < n:
                raise ValueError(f"metadata {_K + 'scores'!r} has {len(values)} entries "
                                 f"for {n} tokens")
            values = values[:n]
        try:
            packed = array.array("f", values)
        except TypeError:
            raise ValueError(f"metadata {_K + 'scores'!r} must hold numbers only") from None
        if sys.byteorder != "little":
            packed.byteswap()
        score_bytes = packed.tobytes()

        proto, extra = self._model_proto(score_bytes)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except RuntimeError as e:  # pragma: no cover - the proto is built to be valid
            raise ValueError(f"cannot build a sentencepiece model from this vocabulary: {e}") \
                from None
        # proto index >= n -> vocabulary id (None: llama.cpp has no token for that byte)
        self._extra_ids = extra

    # ---- the in-memory sentencepiece model ---------------------------------------------

    def _unreachable(self, tag: str, taken: set[str]) -> str:
        """A piece text no merge can produce: it is no vocabulary token, and at every way of
        cutting it in two, one side is neither a single character nor a vocabulary token
        (merges only ever join two such symbols)."""
        vocab = self._token_to_id

        def symbol(x: str) -> bool:
            return len(x) == 1 or x in vocab

        k = 0
        while True:
            text = f"\x01lutllm:{tag}:{k}\x01"
            if text not in taken and text not in vocab and not any(
                    symbol(text[:j]) and symbol(text[j:]) for j in range(1, len(text))):
                taken.add(text)
                return text
            k += 1

    def _model_proto(self, score_bytes: bytes) -> tuple[bytes, dict[int, int | None]]:
        tokens, vocab = self._tokens, self._token_to_id
        n = len(tokens)
        taken: set[str] = set()
        raws = [t.encode("utf-8", "surrogatepass") for t in tokens]
        # texts llama.cpp cannot look up (empty; repeated: the last id wins) or sentencepiece
        # rejects keep their id with a text nothing can match
        odd = [i for i, r in enumerate(raws)
               if not r or len(r) >= _SP_MAX_PIECE_BYTES or b"\0" in r]
        if len(vocab) != n:
            odd += [i for i, t in enumerate(tokens) if vocab[t] != i]
        for i in sorted(set(odd)):
            raws[i] = _to_utf8(self._unreachable(f"id{i}", taken))
        # the texts llama.cpp's byte fallback looks up, whatever the tokens' types
        byte_ids = [i for i, r in enumerate(raws)
                    if len(r) == 6 and r[:3] == b"<0x" and r[5:] == b">"
                    and all(c in b"0123456789ABCDEF" for c in r[3:5])]
        lens = [_pb_varint(k) for k in range(1 << 14)]  # every length a piece can have
        scores = [score_bytes[k:k + 4] for k in range(0, 4 * n, 4)]
        bodies = [b"\x0a" + lens[len(r)] + r + b"\x15" + f for r, f in zip(raws, scores)]
        byte_tail = _pb_int(_PB_TYPE, _SP_BYTE)
        have_byte = [False] * 256
        for i in byte_ids:
            bodies[i] += byte_tail
            have_byte[int(raws[i][3:5], 16)] = True
        out = [b"\x0a" + lens[len(b)] + b for b in bodies]
        # sentencepiece wants all 256 byte pieces and one unknown piece: missing ones are
        # appended after the vocabulary and mapped back to what llama.cpp would emit
        extra: dict[int, int | None] = {}
        idx = n
        for b in range(256):
            if have_byte[b]:
                continue
            piece = _pb_len(_PB_PIECE, b"<0x%02X>" % b) + _pb_int(_PB_TYPE, _SP_BYTE)
            out.append(_pb_len(_PB_PIECES, piece))
            # llama.cpp falls back to the one-character token for the byte
            extra[idx] = vocab.get(chr(b)) if b < 0x80 else None
            idx += 1
        unk_text = _to_utf8(self._unreachable("unk", taken))
        out.append(_pb_len(_PB_PIECES, _pb_len(_PB_PIECE, unk_text)
                           + _pb_int(_PB_TYPE, _SP_UNKNOWN)))
        unk_index = idx
        extra[unk_index] = None
        trainer = (_pb_int(_PB_MODEL_TYPE, _SP_MODEL_BPE) + _pb_int(_PB_VOCAB_SIZE, idx + 1)
                   + _pb_int(_PB_BYTE_FALLBACK, 1) + _pb_int(_PB_UNK_ID, unk_index)
                   + _pb_int(_PB_BOS_ID, -1) + _pb_int(_PB_EOS_ID, -1)
                   + _pb_int(_PB_PAD_ID, -1) + _pb_len(_PB_UNK_PIECE, unk_text))
        normalizer = (_pb_len(_PB_NAME, b"identity") + _pb_int(_PB_ADD_DUMMY_PREFIX, 0)
                      + _pb_int(_PB_REMOVE_EXTRA_WS, 0) + _pb_int(_PB_ESCAPE_WS, 0))
        out.append(_pb_len(_PB_TRAINER_SPEC, trainer))
        out.append(_pb_len(_PB_NORMALIZER_SPEC, normalizer))
        return b"".join(out), extra

    # ---- encoding -----------------------------------------------------------------------

    def _encode_fragments(self, frags: list, out: list[int]) -> None:
        prev_special = True  # the start of the text counts as following a special token
        for frag in frags:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
            else:
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                self._encode_text(frag, out)
                prev_special = False

    def _encode_text(self, text: str, out: list[int]) -> None:
        text = text.replace(" ", _SPACE_MARK)
        if _SURROGATES.search(text) is None:
            self._encode_spm(text, out)
            return
        # A lone surrogate (possible in a Python str) is three bytes no token starts with:
        # llama.cpp writes them as byte tokens and never merges across them.
        pos = 0
        for m in _SURROGATES.finditer(text):
            if m.start() > pos:
                self._encode_spm(text[pos:m.start()], out)
            for b in _to_utf8(m.group()):
                out.append(self._byte_token(b))
            pos = m.end()
        if pos < len(text):
            self._encode_spm(text[pos:], out)

    def _encode_spm(self, text: str, out: list[int]) -> None:
        ids = self._sp.EncodeAsIds(text)
        n = len(self._tokens)
        if ids and max(ids) >= n:
            extra = self._extra_ids
            for k, i in enumerate(ids):
                if i >= n:
                    j = extra.get(i)
                    if j is None:
                        piece = self._sp.IdToPiece(i)
                        raise ValueError(
                            f"the vocabulary has no token for byte {piece} (neither a {piece} "
                            "token nor a one-character token), so this text cannot be encoded")
                    ids[k] = j
        out.extend(ids)

    def _byte_token(self, b: int) -> int:
        t = self._token_to_id.get("<0x%02X>" % b)
        if t is None and b < 0x80:
            t = self._token_to_id.get(chr(b))
        if t is None:
            raise ValueError(f"the vocabulary has no token for byte <0x{b:02X}>, so this "
                             "text cannot be encoded")
        return t

    # ---- decoding -----------------------------------------------------------------------

    def _piece_bytes(self, token_id: int) -> bytes:
        text = self._tokens[token_id]
        a = self._attrs[token_id]
        if a & (_A_HIDDEN | _A_USER_DEFINED):
            return _to_utf8(text)
        if a & _A_NORMAL:
            return _to_utf8(text.replace(_SPACE_MARK, " "))
        if a & _A_BYTE:
            return bytes([_hex_prefix_value(text[3:5])])
        return b""  # unused / undefined tokens render as nothing


def _hex_prefix_value(s: str) -> int:
    """Value of the leading hex digits of `s` (0 if none), truncated to a byte: how
    llama.cpp reads the NN of a byte token's text "<0xNN>"."""
    v = 0
    for ch in s:
        d = "0123456789abcdef".find(ch.lower())
        if d < 0 or not ch.isascii():
            break
        v = v * 16 + d
    return v & 0xFF


Tokenizer._MODELS["llama"] = SPMTokenizer


# --------------------------------------------------------------------------------------
# Streaming detokenization
# --------------------------------------------------------------------------------------


class IncrementalDecoder:
    """Feed token ids one at a time; get back text only once its UTF-8 is complete.

    A multi-byte character split across tokens is held back until its last byte arrives.
    Bytes that can never form a valid character come out as U+FFFD. Call `flush()` at the
    end of the stream to release (as U+FFFD) a trailing incomplete sequence.
    """

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self._tok = tokenizer
        self._special = special
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.token_bytes(token_id, self._special))

    def feed_many(self, ids: Iterable[int]) -> str:
        return "".join(self.feed(t) for t in ids)

    def flush(self) -> str:
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out

    def reset(self) -> None:
        self._utf8.reset()
