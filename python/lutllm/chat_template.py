"""Chat templates: render a model's Jinja `tokenizer.chat_template` into a prompt string.

Renders in a sandboxed, immutable Jinja environment set up the way Hugging Face chat
templates expect (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
`strftime_now`, a `tojson` filter that keeps non-ASCII text). A model without a template
gets its family's turn format (Gemma's for gemma*, ChatML otherwise). It does not parse
model output (tool calls etc.); `chat_prompt_tokens` tokenizes a rendered prompt.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = ["ChatTemplate", "ChatTemplateError", "CHATML_TEMPLATE", "GEMMA_TEMPLATE",
           "fallback_template"]

_KEY = "tokenizer.chat_template"

#: Used when a model carries no template: plain ChatML, no default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Gemma's turn format, for Gemma models whose GGUF carries no template:
#: <start_of_turn>{user|model}\n{content, trimmed}<end_of_turn>\n, generation prompt
#: <start_of_turn>model\n. Gemma has no system role: system messages are put (trimmed,
#: followed by a blank line) at the start of the next user turn. As in llama.cpp's built-in
#: Gemma format, roles need not alternate and the text has no BOS: the tokenizer adds it
#: (add_bos_token), see `chat_prompt_tokens`.
GEMMA_TEMPLATE = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- set content = message.get('content') -%}"
    "{%- if content is string -%}{%- set text = content | trim -%}"
    "{%- elif content is iterable and content is not mapping -%}"
    "{%- set text = content | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join('') | trim -%}"
    "{%- else -%}{%- set text = '' -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = ns.system + text -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' -}}"
    "{%- if ns.system and role != 'model' -%}"
    "{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{{- text + '<end_of_turn>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

# general.architecture -> (template, label) used when the GGUF has no template
_FALLBACKS = {
    "gemma": (GEMMA_TEMPLATE, "fallback Gemma template"),
    "gemma2": (GEMMA_TEMPLATE, "fallback Gemma template"),
    "gemma3": (GEMMA_TEMPLATE, "fallback Gemma template"),
    "gemma3n": (GEMMA_TEMPLATE, "fallback Gemma template"),
}
_CHATML_FALLBACK = (CHATML_TEMPLATE, "fallback ChatML template")


def fallback_template(meta: Mapping[str, Any]) -> tuple[str, str]:
    """(template source, label) for a model without `tokenizer.chat_template`: its family's
    format by `general.architecture` (Gemma's turns for gemma*), ChatML otherwise (qwen2,
    llama, ...)."""
    arch = meta.get("general.architecture")
    return _FALLBACKS.get(arch, _CHATML_FALLBACK) if isinstance(arch, str) else _CHATML_FALLBACK


class ChatTemplateError(ValueError):
    """A chat template failed to compile or render; the message says where and why."""


def _raise_exception(message: str) -> None:
    # what templates call to reject a conversation ("roles must alternate", ...)
    raise ChatTemplateError(f"the chat template rejected the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON text of a value; unlike Jinja's built-in filter it does not HTML-escape."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """Accepts `{% generation %}...{% endgeneration %}` (marks assistant text in some
    templates) and renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        extensions=[jinja2.ext.loopcontrols, _GenerationBlock],
        autoescape=False,
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


def _token_text(meta: Mapping[str, Any], key: str) -> str:
    tokens = meta.get("tokenizer.ggml.tokens")
    i = meta.get(key)
    if tokens is None or i is None:
        return ""
    try:
        return tokens[int(i)]
    except (IndexError, TypeError, ValueError):
        return ""


class ChatTemplate:
    """A compiled chat template plus the special-token strings templates refer to."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "",
                 name: str = "chat template", extra_context: Mapping[str, Any] | None = None):
        if not isinstance(source, str):
            raise ChatTemplateError(f"{name}: template source must be a string, "
                                    f"got {type(source).__name__}")
        self.source = source
        self.name = name
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._extra = dict(extra_context or {})
        try:
            self._template = _environment().from_string(source)
        except TemplateSyntaxError as e:
            raise ChatTemplateError(
                f"{name}: syntax error at template line {e.lineno}: {e.message}") from None
        except TemplateError as e:
            raise ChatTemplateError(f"{name}: cannot compile: {e}") from None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], name: str | None = None,
                      fallback: bool = True) -> "ChatTemplate":
        """The model's template (`tokenizer.chat_template`, or `tokenizer.chat_template.<name>`).

        When the model has none and `fallback` is set, its architecture's format is used
        (see `fallback_template`); else ChatTemplateError.
        """
        key = _KEY if name is None else f"{_KEY}.{name}"
        src = meta.get(key)
        if src is None:
            if name is not None:
                have = cls.names(meta)
                raise ChatTemplateError(f"metadata has no {key!r}; named templates: "
                                        f"{', '.join(have) if have else 'none'}")
            if not fallback:
                raise ChatTemplateError(f"metadata has no {key!r}")
            src, label = fallback_template(meta)
        else:
            label = f"metadata {key!r}"
        return cls(src,
                   bos_token=_token_text(meta, "tokenizer.ggml.bos_token_id"),
                   eos_token=_token_text(meta, "tokenizer.ggml.eos_token_id"),
                   name=label)

    @staticmethod
    def names(meta: Mapping[str, Any]) -> list[str]:
        """Names of the extra templates (`tokenizer.chat_template.<name>`) in the metadata."""
        p = _KEY + "."
        return sorted(k[len(p):] for k in meta if isinstance(k, str) and k.startswith(p))

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> str:
        """The prompt text for `messages` (a list of {"role": ..., "content": ...} dicts).

        Extra keyword arguments are passed to the template as variables.
        """
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ChatTemplateError(
                f"messages must be a list of dicts, got {type(messages).__name__}")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ChatTemplateError(
                    f"messages[{i}] must be a dict, got {type(m).__name__}")
            if "role" not in m:
                raise ChatTemplateError(f"messages[{i}] has no 'role'")
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **self._extra,
            **kwargs,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": bool(add_generation_prompt),
        }
        if tools is not None:
            context["tools"] = list(tools)
        if documents is not None:
            context["documents"] = list(documents)
        try:
            return self._template.render(**context)
        except ChatTemplateError as e:
            raise ChatTemplateError(f"{self.name}: {e}") from None
        except SecurityError as e:
            raise ChatTemplateError(f"{self.name}: blocked by the sandbox: {e}") from None
        except TemplateError as e:
            raise ChatTemplateError(
                f"{self.name}: rendering failed ({type(e).__name__}): {e}") from None
        except Exception as e:  # errors raised by Python code the template called
            raise ChatTemplateError(
                f"{self.name}: rendering failed ({type(e).__name__}): {e}") from None


def chat_prompt_tokens(template: ChatTemplate, tokenizer, messages, tools=None) -> list[int]:
    """Token ids a chat turn is answered from: the template rendered with the generation prompt,
    special tokens parsed, and BOS exactly once (templates that write bos_token themselves must not
    get a second one from the tokenizer's add_bos rule). The one place CLI, API and server build
    chat prompts."""
    text = template.render(messages, add_generation_prompt=True, tools=tools)
    toks = tokenizer.encode(text, add_special=False, parse_special=True)
    bos = tokenizer.bos_id
    if tokenizer.add_bos and bos is not None and (not toks or toks[0] != bos):
        toks.insert(0, bos)
    return toks
