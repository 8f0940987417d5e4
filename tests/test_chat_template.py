"""Tests for lutllm.chat_template: real SmolLM2 / Qwen templates, the Gemma fallback, sandboxing,
error messages.

Expected prompts are written out by hand from the ChatML / Gemma formats or come from
llama.cpp's built-in Gemma format (tests/data/tokenizer_golden_gemma3.json), not from the code.
"""
import datetime

import pytest

from lutllm.chat_template import CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplate, ChatTemplateError

CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
]

SMOL_DEFAULT_SYSTEM = (
    "<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
)


@pytest.fixture(scope="module")
def smol_meta(smollm2_path):
    from lutllm.gguf_file import GGUFFile

    return GGUFFile(smollm2_path).metadata


def test_smollm2_multi_turn_with_generation_prompt(smol_meta):
    t = ChatTemplate.from_metadata(smol_meta)
    want = (
        SMOL_DEFAULT_SYSTEM
        + "<|im_start|>user\nHi<|im_end|>\n"
        + "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
        + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )
    assert t.render(CONVERSATION, add_generation_prompt=True) == want


def test_smollm2_own_system_prompt_replaces_default(smol_meta):
    t = ChatTemplate.from_metadata(smol_meta)
    msgs = [{"role": "system", "content": "Be brief."}] + CONVERSATION[:1]
    want = ("<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n")
    assert t.render(msgs) == want


def test_smollm2_special_token_strings(smol_meta):
    t = ChatTemplate.from_metadata(smol_meta)
    assert t.bos_token == "<|im_start|>"
    assert t.eos_token == "<|im_end|>"
    assert ChatTemplate.names(smol_meta) == []


def test_fallback_is_chatml_without_system_prompt():
    t = ChatTemplate.from_metadata({})
    assert t.source == CHATML_TEMPLATE
    want = ("<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n")
    assert t.render(CONVERSATION, add_generation_prompt=True) == want
    with pytest.raises(ChatTemplateError, match="tokenizer.chat_template"):
        ChatTemplate.from_metadata({}, fallback=False)


def test_named_templates():
    meta = {"tokenizer.chat_template": "A", "tokenizer.chat_template.tool_use": "B{{ 1 + 1 }}"}
    assert ChatTemplate.names(meta) == ["tool_use"]
    assert ChatTemplate.from_metadata(meta, name="tool_use").render([]) == "B2"
    with pytest.raises(ChatTemplateError, match="tool_use"):
        ChatTemplate.from_metadata(meta, name="rag")


def test_whitespace_control_matches_hf_settings():
    # trim_blocks drops the newline after a block tag; lstrip_blocks drops the indentation
    # before one. Expected output written by hand.
    src = ("{% for m in messages %}\n    {% if m.role == 'user' %}\n[{{ m.content }}]\n"
           "    {% endif %}\n{% endfor %}")
    out = ChatTemplate(src).render([{"role": "user", "content": "a"},
                                    {"role": "bot", "content": "b"},
                                    {"role": "user", "content": "c"}])
    assert out == "[a]\n[c]\n"


def test_loop_controls_and_generation_block():
    src = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
           "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}")
    msgs = [{"role": "user", "content": c} for c in "xyz"]
    assert ChatTemplate(src).render(msgs) == "xy"


def test_tojson_keeps_unicode_and_takes_options():
    src = "{{ tools | tojson }}|{{ {'b': 1, 'a': [1, 2]} | tojson(indent=2, sort_keys=true) }}"
    out = ChatTemplate(src).render([], tools=[{"name": "café", "x": "<&>"}])
    assert out == ('[{"name": "café", "x": "<&>"}]|'
                   '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}')


def test_strftime_now_and_extra_variables():
    out = ChatTemplate("{{ strftime_now('%Y') }} {{ bos_token }}{{ custom }}",
                       bos_token="<s>").render([], custom="!")
    year = datetime.datetime.now().year
    assert out in (f"{year} <s>!", f"{year + 1} <s>!")  # new year's eve


def test_raise_exception_message_reaches_the_caller():
    src = ("{% if messages[0]['role'] != 'user' %}"
           "{{ raise_exception('Conversation roles must start with user') }}{% endif %}ok")
    t = ChatTemplate(src, name="strict template")
    assert t.render([{"role": "user", "content": ""}]) == "ok"
    with pytest.raises(ChatTemplateError,
                       match="strict template.*Conversation roles must start with user"):
        t.render([{"role": "assistant", "content": ""}])


def test_syntax_error_names_the_line():
    with pytest.raises(ChatTemplateError, match="line 2"):
        ChatTemplate("fine\n{% for %}")


def test_undefined_attribute_use_is_reported():
    with pytest.raises(ChatTemplateError, match="undefined"):
        ChatTemplate("{{ nothing.here }}").render([])


@pytest.mark.parametrize("src", [
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
])
def test_sandbox_blocks_python_internals(src):
    with pytest.raises(ChatTemplateError, match="unsafe|sandbox"):
        ChatTemplate(src).render([{"role": "user", "content": "x"}])


def test_sandbox_hides_dunder_attributes():
    # a bare unsafe attribute renders as nothing rather than leaking the object
    assert ChatTemplate("[{{ ().__class__ }}]").render([]) == "[]"


def test_sandbox_is_immutable():
    with pytest.raises(ChatTemplateError, match="unsafe|sandbox"):
        ChatTemplate("{% set x = [] %}{{ x.append(1) }}").render([])
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages[0].update({'role': 'system'}) }}").render(msgs)
    assert msgs == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("msgs, match", [
    ("hello", "list of dicts"),
    ([["user", "hi"]], r"messages\[0\] must be a dict"),
    ([{"content": "hi"}], r"messages\[0\] has no 'role'"),
])
def test_bad_messages_are_named(msgs, match):
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate(CHATML_TEMPLATE).render(msgs)


class _SpecialTokenizer:
    """Tokenizer stand-in: one id per character, '<s>' parsed as the special BOS id 1."""

    bos_id = 1

    def __init__(self, add_bos):
        self.add_bos = add_bos

    def encode(self, text, add_special=True, parse_special=False):
        assert add_special is False and parse_special is True
        out, i = [], 0
        while i < len(text):
            if text.startswith("<s>", i):
                out.append(1)
                i += 3
            else:
                out.append(1000 + ord(text[i]))
                i += 1
        return out


@pytest.mark.parametrize("source,add_bos,first_two", [
    ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}", True, [1, 1000 + ord("h")]),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", True, [1, 1000 + ord("h")]),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", False, [1000 + ord("h"), 1000 + ord("i")]),
])
def test_chat_prompt_tokens_puts_bos_exactly_once(source, add_bos, first_two):
    from lutllm.chat_template import ChatTemplate, chat_prompt_tokens

    toks = chat_prompt_tokens(ChatTemplate(source, bos_token="<s>"), _SpecialTokenizer(add_bos),
                              [{"role": "user", "content": "hi"}])
    assert toks[:2] == first_two
    assert toks.count(1) == (1 if add_bos or "bos_token" in source else 0)


# ----------------------------------------------------------------------------------------
# Fallback by architecture: Gemma's turn format, ChatML otherwise
# ----------------------------------------------------------------------------------------


def _gemma_golden():
    import json
    import os

    path = os.path.join(os.path.dirname(__file__), "data", "tokenizer_golden_gemma3.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("arch, want", [
    ("gemma3", GEMMA_TEMPLATE), ("gemma2", GEMMA_TEMPLATE), ("gemma", GEMMA_TEMPLATE),
    ("qwen2", CHATML_TEMPLATE), ("llama", CHATML_TEMPLATE), (None, CHATML_TEMPLATE),
    (7, CHATML_TEMPLATE),
])
def test_fallback_follows_the_architecture(arch, want):
    meta = {} if arch is None else {"general.architecture": arch}
    t = ChatTemplate.from_metadata(meta)
    assert t.source == want
    assert ("Gemma" in t.name) == (want is GEMMA_TEMPLATE)
    # a template in the metadata always wins
    meta["tokenizer.chat_template"] = "T"
    assert ChatTemplate.from_metadata(meta).source == "T"


def test_gemma_fallback_by_hand():
    t = ChatTemplate.from_metadata({"general.architecture": "gemma3"}, fallback=True)
    msgs = [{"role": "system", "content": "Be brief. "},
            {"role": "user", "content": " Hi\n"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "Two "},
                                         {"type": "image"}, {"type": "text", "text": "parts"}]}]
    want = ("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
            "<start_of_turn>model\nHello!<end_of_turn>\n"
            "<start_of_turn>user\nTwo parts<end_of_turn>\n"
            "<start_of_turn>model\n")
    assert t.render(msgs, add_generation_prompt=True) == want
    assert t.render([{"role": "user"}]) == "<start_of_turn>user\n<end_of_turn>\n"


def test_gemma_fallback_matches_llama_cpp_builtin_format():
    # llama.cpp's own Gemma chat format (llama_chat_apply_template "gemma") rendered these
    # conversations; see tools/make_tokenizer_golden.py
    chats = _gemma_golden()["gemma_chat_format"]
    assert len(chats) >= 5
    t = ChatTemplate(GEMMA_TEMPLATE)
    for chat in chats:
        assert t.render(chat["messages"],
                        add_generation_prompt=chat["add_generation_prompt"]) == chat["text"]


def test_gemma3_model_chat_prompt_tokens(gemma3_path):
    from lutllm.chat_template import chat_prompt_tokens
    from lutllm.gguf_file import GGUFFile
    from lutllm.tokenizer import Tokenizer

    meta = GGUFFile(gemma3_path).metadata
    assert "tokenizer.chat_template" not in meta  # why the fallback matters for this model
    t = ChatTemplate.from_metadata(meta)
    assert t.source == GEMMA_TEMPLATE and t.bos_token == "<bos>"
    tok = Tokenizer.from_metadata(meta)
    for chat in _gemma_golden()["gemma_chat_format"]:
        if not chat["add_generation_prompt"]:
            continue
        # llama.cpp's ids for its own rendering, with its BOS (add_bos_token) and the turn
        # markers parsed as special tokens: exactly one BOS
        got = chat_prompt_tokens(t, tok, chat["messages"])
        assert got == chat["ids"]
        assert got.count(tok.bos_id) == 1
    end = tok.token_id("<end_of_turn>")
    assert tok.is_eog(end)  # a reply stops at the end of its turn


def test_qwen2_model_keeps_its_own_template(qwen05_path):
    from lutllm.gguf_file import GGUFFile

    meta = GGUFFile(qwen05_path).metadata
    t = ChatTemplate.from_metadata(meta)
    assert t.source == meta["tokenizer.chat_template"]
    out = t.render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert out == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                   "helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\n")
    meta = {k: v for k, v in meta.items() if k != "tokenizer.chat_template"}
    assert ChatTemplate.from_metadata(meta).source == CHATML_TEMPLATE
