"""The shapes of one line of an OpenAI Batch input file (msgspec structs: fast, strict).

These checks run in the input stage, before any engine is loaded: they decide whether a line
*becomes a request*. Whether the engine accepts the request's parameters (ranges, context
length, structured-output schemas) is decided later by vLLM's own request models, and a
rejection there is an HTTP-400-style error line, as the OpenAI Batch API reports it.
Unknown fields are allowed everywhere and kept: the body is stored as the original JSON text.
"""

from typing import Annotated, Any, Literal, cast

import msgspec

from resources.endpoints import (
    CHAT_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    RERANK_URL,
    RESPONSES_URL,
    SCORE_URL,
)


class RequestLine(msgspec.Struct, gc=False):
    """The envelope: ``{"custom_id", "method", "url", "body"}``; ``body`` kept as raw JSON."""

    custom_id: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    method: str
    url: str
    body: msgspec.Raw


class ContentPart(msgspec.Struct, gc=False):
    """A part of a message's content: text, an image (``image_url``), or another kind that
    vLLM's request model and the chat template judge."""

    type: str
    text: str | None = None
    image_url: Any = None  # {"url": "data:image/png;base64,...", "detail": ...}


class ChatMessage(msgspec.Struct, gc=False):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    # Read only to tell a plain message (a role and a text) from one the chat template is
    # given more of; vLLM's request model checks them.
    name: Any = None
    tool_calls: Any = None
    tool_call_id: Any = None
    reasoning: Any = None


class _Body(msgspec.Struct):
    model: str
    stream: bool | None = None


class ChatBody(_Body):
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=list
    )
    # Read by the token estimate (vLLM's request model checks them): the output a line
    # allows, and whether the chat template is given more than the messages.
    max_tokens: Any = None
    max_completion_tokens: Any = None
    n: Any = None
    tools: Any = None
    documents: Any = None
    chat_template: Any = None
    chat_template_kwargs: Any = None
    continue_final_message: Any = None
    add_generation_prompt: Any = None
    add_special_tokens: Any = None


class CompletionBody(_Body):
    prompt: str | list[Any] | None = None


class EmbeddingBody(_Body):
    input: str | list[Any] | None = None
    encoding_format: Literal["float", "base64"] | None = None


class ResponsesBody(_Body):
    """``/v1/responses``: ``input`` is a string or a list of items (messages, tool outputs)."""

    input: str | list[Any] | None = None
    instructions: str | None = None


class ScoreBody(_Body):
    """``/v1/score``: queries against documents (or items), or vLLM's older ``text_1``/``text_2``
    and ``data_1``/``data_2``; vLLM's request model checks the texts."""

    queries: Any = None
    documents: Any = None
    items: Any = None
    text_1: Any = None
    text_2: Any = None
    data_1: Any = None
    data_2: Any = None

    def pair(self) -> tuple[Any, Any] | None:
        """The two sides scored against each other, or None when no pair is given."""
        for first, second in (
            (self.queries, self.documents),
            (self.queries, self.items),
            (self.text_1, self.text_2),
            (self.data_1, self.data_2),
        ):
            if first is not None and second is not None:
                return first, second
        return None


class RerankBody(_Body):
    """``/v1/rerank``: one query and the documents to order by relevance to it."""

    query: Any = None
    documents: Any = None


BODY_TYPES: dict[str, type[_Body]] = {
    CHAT_URL: ChatBody,
    COMPLETIONS_URL: CompletionBody,
    EMBEDDINGS_URL: EmbeddingBody,
    RESPONSES_URL: ResponsesBody,
    SCORE_URL: ScoreBody,
    RERANK_URL: RerankBody,
}
_DECODERS = {url: msgspec.json.Decoder(kind) for url, kind in BODY_TYPES.items()}
ENVELOPE_DECODER = msgspec.json.Decoder(RequestLine)


def _prompt_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not an OpenAI prompt/input (a string, strings, token ids), or None."""
    if value is None:
        return f"`{name}` is required"
    if isinstance(value, str):
        return None
    if not value:
        return f"`{name}` must not be an empty list"
    if all(isinstance(v, str) for v in value):
        return None
    if all(type(v) is int for v in value):
        return None
    if all(isinstance(v, list) and v and all(type(t) is int for t in v) for v in value):
        return None
    return f"`{name}` must be a string, a list of strings, token ids or lists of token ids"


def decode_body(url: str, raw: bytes) -> _Body:
    """The body of a request for ``url``; raises ValueError with a readable reason."""
    try:
        body = _DECODERS[url].decode(raw)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc).replace("`$", "`body")) from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    if isinstance(body, ChatBody) and not body.messages:
        raise ValueError("`messages` is required and must not be empty")
    if isinstance(body, CompletionBody) and (problem := _prompt_problem("prompt", body.prompt)):
        raise ValueError(problem)
    if isinstance(body, EmbeddingBody) and (problem := _prompt_problem("input", body.input)):
        raise ValueError(problem)
    if isinstance(body, ResponsesBody) and not body.input:
        raise ValueError("`input` is required: a string or a non-empty list of items")
    if isinstance(body, ScoreBody) and body.pair() is None:
        raise ValueError("`queries` and `documents` are required")
    if isinstance(body, RerankBody) and (body.query is None or not body.documents):
        raise ValueError("`query` and `documents` are required")
    if body.stream:
        raise ValueError("stream=true is not supported in a batch")
    return body


def image_urls(body: ChatBody) -> list[object]:
    """The ``url`` of every ``image_url`` part of the body's messages."""
    urls: list[object] = []
    for message in body.messages:
        if isinstance(message.content, list):
            for part in message.content:
                if part.type == "image_url":
                    given = part.image_url
                    urls.append(given.get("url") if isinstance(given, dict) else given)
    return urls


PREFIX_CHARS = 256


def prompt_summary(body: _Body) -> tuple[int, str]:
    """Characters of prompt text (token ids count 4 each) and the prompt's first characters.

    The character count gives a rough token estimate; the prefix (role markers included)
    orders requests so that those sharing a system prompt run together.
    """
    if isinstance(body, ChatBody):
        total, prefix = 0, ""
        for message in body.messages:
            text = message.content
            if not isinstance(text, str):
                text = "".join(part.text or "" for part in text) if text else ""
            if total < PREFIX_CHARS:
                prefix += f"\x00{message.role}\x00{text[:PREFIX_CHARS]}"
            total += len(text)
        return total, prefix[:PREFIX_CHARS]
    if isinstance(body, ResponsesBody):
        given = body.input
        items = given if isinstance(given, str) else msgspec.json.encode(given).decode()
        whole = (body.instructions or "") + items
        return len(whole), whole[:PREFIX_CHARS]
    if isinstance(body, ScoreBody | RerankBody):
        if isinstance(body, RerankBody):
            first, second = body.query, body.documents
        else:
            first, second = body.pair() or (None, None)
        sides = [side if isinstance(side, list) else [side] for side in (first, second)]
        total = sum(len(v) for side in sides for v in side if isinstance(v, str))
        return total, first[:PREFIX_CHARS] if isinstance(first, str) else ""
    value = body.prompt if isinstance(body, CompletionBody) else cast(EmbeddingBody, body).input
    if isinstance(value, str):
        return len(value), value[:PREFIX_CHARS]
    total = sum(
        len(v) if isinstance(v, str) else 4 * (len(v) if isinstance(v, list) else 1)
        for v in value or ()
    )
    first = value[0] if value else ""
    prefix = first[:PREFIX_CHARS] if isinstance(first, str) else ""
    return total, prefix


def plain_messages(body: ChatBody) -> tuple[tuple[str, ...], list[str]] | None:
    """The roles and texts of the messages, if the body gives its template nothing more."""
    if (
        body.tools
        or body.documents
        or body.chat_template is not None
        or body.chat_template_kwargs
        or body.continue_final_message
        or body.add_generation_prompt not in (None, True)
        or body.add_special_tokens
    ):
        return None
    roles, texts = [], []
    for m in body.messages:
        if not isinstance(m.content, str) or m.name or m.tool_calls or m.tool_call_id:
            return None
        if m.reasoning is not None:
            return None
        roles.append(m.role)
        texts.append(m.content)
    return tuple(roles), texts
