"""Chat templates rendered as Hugging Face transformers renders them.

This mirrors ``transformers/utils/chat_template_utils.py`` (transformers 5.23.0: ``_cached_compile_jinja_template``
and ``render_jinja_template``) and ``PreTrainedTokenizerBase.apply_chat_template`` / ``get_chat_template`` in
``transformers/tokenization_utils_base.py``: an ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and
``lstrip_blocks`` and the ``loopcontrols`` extension; globals ``raise_exception``, ``strftime_now``, ``dict``
and a ``namespace`` that refuses underscore-prefixed names; a ``tojson`` filter that is ``json.dumps`` with
``ensure_ascii=False`` (Jinja's own escapes HTML characters); the template sees ``messages``, ``tools``,
``documents``, ``add_generation_prompt`` and the tokenizer's named special tokens (``bos_token``, ``eos_token``,
...). Messages are stripped of keys whose value is ``None`` and their reasoning is aliased as transformers does.

One difference, on purpose: an attribute the sandbox calls unsafe (``''.__class__``) raises ``SecurityError`` the
moment it is touched, where Jinja's sandbox returns an undefined value that raises only once it is used
(``{{ ''.__class__ }}`` renders as nothing there). Such a template is refused when its model is registered
(``probe_template``), so no registered template differs from transformers' rendering for that reason.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# The names transformers passes to a template from the tokenizer's special tokens (``SPECIAL_TOKENS_ATTRIBUTES``).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# The names under which a message's reasoning reaches a template (transformers' ``_REASONING_FIELDS``).
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(ValueError):
    """A chat template that cannot be used: no template, none by that name, a syntax error, or a render that
    failed (the template's own ``raise_exception``, a type error in it)."""


class UnsafeChatTemplate(ChatTemplateError):
    """A chat template that reaches outside the sandbox (an attribute such as ``__class__``, a namespace field
    named with an underscore): refused at registration."""


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox, except that an unsafe attribute raises as soon as it is read."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (transformers' ``AssistantTracker``, which
    also records where assistant text lies: of no use for counting)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys`` without the type itself (no attribute access to ``dict``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore-prefixed names, as transformers' ``TemplateNamespace``."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}")


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """``source`` compiled in the sandbox; ``ChatTemplateError`` for a syntax error."""
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from None


def chat_templates_of(config: Mapping[str, Any]) -> dict[str, str]:
    """A ``tokenizer_config.json``'s chat templates by name: one string is ``default``, a list of
    ``{"name", "template"}`` is read as transformers reads it, none is ``{}``."""
    value = config.get("chat_template")
    if value is None:
        return {}
    if isinstance(value, str):
        return {"default": value}
    if isinstance(value, list) and all(
        isinstance(t, Mapping) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in value
    ):
        return {t["name"]: t["template"] for t in value}
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return dict(value)
    raise ChatTemplateError("chat_template must be a string or a list of {name, template}")


def pick_template(templates: Mapping[str, str], tools: object) -> str:
    """The template transformers' ``get_chat_template`` picks with no name given: with tools, ``tool_use`` if
    there is one; else ``default``; a single unnamed template is ``default``."""
    if not templates:
        raise ChatTemplateError("the model has no chat template")
    if tools is not None and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ChatTemplateError(f"the model has several chat templates and none is the default: {sorted(templates)}")


def _plain(value: Any) -> Any:
    """What a template may see: JSON's types only (transformers' ``_plain_template_data``)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def render_chat(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> str:
    """The text ``apply_chat_template(messages, tools=..., documents=..., add_generation_prompt=...,
    tokenize=False, **variables)`` renders with template ``source`` and a tokenizer whose special tokens are
    ``special_tokens``. ``UnsafeChatTemplate`` when the template touches what the sandbox forbids,
    ``ChatTemplateError`` when it fails otherwise."""
    if not messages:
        raise ChatTemplateError("Cannot apply chat template to an empty conversation.")
    template = compile_template(source)
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise ChatTemplateError("documents must be a list of objects")
    chat = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise ChatTemplateError("every message must be an object")
        chat.append(_alias_reasoning(_plain({k: v for k, v in message.items() if v is not None})))
    context = {**(special_tokens or {}), **_plain(variables)}
    try:
        return template.render(
            messages=chat,
            tools=_plain(None if tools is None else list(tools)),
            documents=_plain(None if documents is None else list(documents)),
            add_generation_prompt=add_generation_prompt,
            **context,
        )
    except SecurityError as exc:
        raise UnsafeChatTemplate(f"the chat template reaches outside its sandbox: {exc}") from None
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as exc:
        raise ChatTemplateError(f"the chat template failed: {type(exc).__name__}: {exc}") from None


# Conversations a template is tried on at registration: every role and shape a client may send.
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
_PROBES: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    ([{"role": "user", "content": "Hello"}], None),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
      {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Again"}], None),
    ([{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], _PROBE_TOOLS),
]  # fmt: skip


def probe_template(source: str, special_tokens: Mapping[str, str]) -> None:
    """Render ``source`` on a few conversations (with and without a generation prompt) and raise
    ``UnsafeChatTemplate`` if any reaches outside the sandbox, ``ChatTemplateError`` if it does not compile.
    A template that refuses a conversation (``raise_exception``: many refuse a system message or tools) is
    not refused for that, as long as it renders one of them."""
    compile_template(source)
    failures = []
    for messages, tools in _PROBES:
        for generation_prompt in (True, False):
            try:
                render_chat(source, messages, tools=tools, add_generation_prompt=generation_prompt,
                            special_tokens=special_tokens)  # fmt: skip
            except UnsafeChatTemplate:
                raise
            except ChatTemplateError as exc:
                failures.append(str(exc))
    if len(failures) == 2 * len(_PROBES):
        raise ChatTemplateError(f"the chat template renders no conversation: {failures[0]}")
