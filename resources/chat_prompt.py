"""Render a chat request's prompt text as vLLM does, without vLLM or transformers.

The template is compiled in the environment ``transformers`` compiles chat templates in (a
sandbox with ``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, its ``tojson``,
``raise_exception`` and ``strftime_now``), and messages are shaped as vLLM's chat parser shapes
text messages: parts joined by newlines (or kept as text parts when the template loops over a
message's content), ``developer`` turned ``system`` when the template does not know the role,
tool-call arguments parsed to objects.

Rendering a template costs more than validating a line, so messages of the plain shape (a role
and a text each, no tools) are rendered once per sequence of roles with marked stand-ins for the
texts; later lines of that shape are the rendered pieces with their texts put in. A template that
does anything with a text but output it (strip it, search it, measure it, escape it) is seen doing
so on the stand-ins, and its lines are then rendered one by one.
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import regex
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A line may set these for the template; vLLM passes each to the template.
TEMPLATE_FIELDS = ("tools", "documents", "chat_template_kwargs", "chat_template")
_LOOPS_OVER_CONTENT = regex.compile(
    r"for\s+\w+\s+in\s+(?:\w+\s*\[\s*['\"]content['\"]\s*\]|\w+\.content\b|content\b)"
)


class Uncountable(ValueError):
    """A request whose prompt this renderer cannot reproduce exactly (the reason says why)."""


class _Generation(jinja2.ext.Extension):
    """``{% generation %}`` blocks (assistant masks): rendered as their body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def compile_template(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def read_chat_template(model_dir: Path) -> str | None:
    """The model's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s."""
    standalone = model_dir / "chat_template.jinja"
    if standalone.is_file():
        return standalone.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return None
    found = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    if isinstance(found, list):  # named templates: vLLM takes "default"
        named = {t.get("name"): t.get("template") for t in found if isinstance(t, dict)}
        found = named.get("default")
    return found if isinstance(found, str) else None


def fill(pieces: list[str], texts: list[str]) -> str:
    """A prompt of plain messages: the template's pieces with the messages' texts between."""
    out = [pieces[0]]
    for text, after in zip(texts, pieces[1:], strict=True):
        out += (text, after)
    return "".join(out)


class _Probe(str):
    """A stand-in text that notes any use of it other than being output or concatenated."""

    used: list[str]

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("__"):
            str.__getattribute__(self, "used").append(name)
        return str.__getattribute__(self, name)

    def _note(self, what: str) -> None:
        str.__getattribute__(self, "used").append(what)

    def __contains__(self, item: object) -> bool:
        self._note("in")
        return str.__contains__(self, item)  # type: ignore[operator]

    def __eq__(self, other: object) -> bool:
        self._note("==")
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        self._note("!=")
        return str.__ne__(self, other)

    def __getitem__(self, key: Any) -> str:
        self._note("[]")
        return str.__getitem__(self, key)

    def __iter__(self) -> Any:
        self._note("iter")
        return str.__iter__(self)

    __hash__ = str.__hash__


def _probe(text: str, used: list[str]) -> _Probe:
    made = _Probe(text)
    made.used = used
    return made


class ChatTemplate:
    """One chat template with the special tokens its model passes to it."""

    def __init__(self, source: str, special_tokens: dict[str, str]):
        self.source = source
        self.template = compile_template(source)
        self.special_tokens = special_tokens
        self.content_as_parts = bool(_LOOPS_OVER_CONTENT.search(source))
        self.knows_developer = '"developer"' in source or "'developer'" in source
        self._shapes: dict[tuple[tuple[str, bool], ...], list[str] | None] = {}

    def render(self, body: dict[str, Any]) -> str:
        """The prompt text of a chat request body (raises :class:`Uncountable`)."""
        if "chat_template" in body or body.get("continue_final_message"):
            raise Uncountable("a line's own chat_template or continue_final_message")
        messages = [self._message(m) for m in body["messages"]]
        add_generation_prompt = body.get("add_generation_prompt", True)
        plain = (
            add_generation_prompt is True
            and not any(body.get(name) for name in TEMPLATE_FIELDS)
            and all(m.keys() == {"role", "content"} for m in messages)
            and all(isinstance(m["content"], str) for m in messages)
        )
        if plain:
            pieces = self.pieces(tuple((m["role"], bool(m["content"])) for m in messages))
            if pieces is not None:
                return fill(pieces, [m["content"] for m in messages])
        return self._render(
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=[_tool(t) for t in body["tools"]] if body.get("tools") else None,
            documents=body.get("documents"),
            **(body.get("chat_template_kwargs") or {}),
        )

    def _render(self, messages: list[dict[str, Any]], **kwargs: Any) -> str:
        try:
            return self.template.render(messages=messages, **self.special_tokens, **kwargs)
        except jinja2.TemplateError as error:
            raise Uncountable(f"the chat template refuses the messages: {error}") from error
        except Exception as error:  # a template may fail on any input it does not expect
            raise Uncountable(f"the chat template fails on the messages: {error!r}") from error

    def role(self, role: str) -> str:
        """The role the template is given: ``developer`` is ``system`` to a template without it."""
        return "system" if role == "developer" and not self.knows_developer else role

    def pieces(self, shape: tuple[tuple[str, bool], ...]) -> list[str] | None:
        """The text around each message's content for messages of ``shape``, if the template
        only outputs the contents (None: render each line)."""
        if shape in self._shapes:
            return self._shapes[shape]
        found = [self._pieces_with(shape, width) for width in (1, 40)]
        self._shapes[shape] = found[0] if found[0] is not None and found[0] == found[1] else None
        return self._shapes[shape]

    def _pieces_with(self, shape: tuple[tuple[str, bool], ...], width: int) -> list[str] | None:
        used: list[str] = []
        marks = [
            f"\x00<&'\"\\ {k}{'x' * width}\n\x00" if full else ""
            for k, (_, full) in enumerate(shape)
        ]
        messages = [
            {"role": role, "content": _probe(mark, used)}
            for (role, _), mark in zip(shape, marks, strict=True)
        ]
        try:
            text = self._render(messages, add_generation_prompt=True)
        except Uncountable:
            return None
        if used or any(mark and text.count(mark) != 1 for mark in marks):
            return None
        pieces, rest = [], text
        for mark in marks:  # an empty content is rendered as itself: no piece boundary moves
            if mark:
                before, rest = rest.split(mark)
                pieces.append(before)
            else:
                pieces.append("")
        return [*pieces, rest]

    def _message(self, message: dict[str, Any]) -> dict[str, Any]:
        role = self.role(str(message.get("role")))
        content = message.get("content")
        texts: list[str] = []
        if isinstance(content, str):
            texts = [content]
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise Uncountable(f"a content part of type {kind!r}")
                texts.append(str(part.get("text") or ""))
        elif content is not None:
            raise Uncountable("a message content that is neither text nor parts")
        shaped: dict[str, Any] = {"role": role}
        if self.content_as_parts and role != "tool":  # vLLM joins a tool result's parts
            shaped["content"] = [{"type": "text", "text": t} for t in texts]
        else:
            shaped["content"] = "\n".join(texts)
        for key in ("name", "tool_call_id", "reasoning"):
            if isinstance(message.get(key), str):
                shaped[key] = message[key]
        if role == "assistant" and message.get("tool_calls"):
            shaped["tool_calls"] = [_tool_call(call) for call in message["tool_calls"]]
        return shaped


def _tool(tool: Any) -> dict[str, Any]:
    """A tool as vLLM's request model gives it to templates: its known fields, unset ones null
    (``strict`` and ``defer_loading`` left out when unset)."""
    if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
        raise Uncountable("a tool that is not a function")
    function = tool["function"]
    shaped = {
        "name": function.get("name"),
        "description": function.get("description"),
        "parameters": function.get("parameters"),
    }
    for key in ("strict", "defer_loading"):
        value = function.get(key, tool.get(key) if key == "defer_loading" else None)
        if value is not None:
            shaped[key] = value
    out: dict[str, Any] = {"type": tool.get("type", "function"), "function": shaped}
    if tool.get("defer_loading") is not None:
        out["defer_loading"] = tool["defer_loading"]
    return out


def _tool_call(call: Any) -> Any:
    """A tool call with its arguments as an object, as vLLM passes it to templates."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise Uncountable("a tool call that is not a function call")
    function = dict(call["function"])
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments) if arguments else {}
        except json.JSONDecodeError:
            function["arguments"] = {}
    elif not arguments:
        function["arguments"] = {}
    return {**call, "function": function}
