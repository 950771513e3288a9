"""Pydantic models for one line of an OpenAI Batch input file.

These checks run in the input stage, before any engine is loaded: they decide whether a line
*becomes a request*. Whether the engine accepts the request's parameters (ranges, context
length, structured-output schemas) is decided later by vLLM's own request models, and a
rejection there is an HTTP-400-style error line, as the OpenAI Batch API reports it.
"""

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
EMBEDDINGS_URL = "/v1/embeddings"
SUPPORTED_URLS = (CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL)


class _Body(BaseModel):
    """Fields common to every endpoint; unknown fields are kept and passed on."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr
    stream: bool | None = None

    @field_validator("stream")
    @classmethod
    def _no_streaming(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("stream=true is not supported in a batch")
        return value


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[_TextPart] | None = None


class ChatBody(_Body):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]


def _not_empty(value: Any) -> Any:
    if isinstance(value, list) and not value:
        raise ValueError("must not be an empty list")
    return value


_TokenIds = list[int]
PromptInput = Annotated[
    StrictStr | list[StrictStr] | _TokenIds | list[_TokenIds], AfterValidator(_not_empty)
]


class CompletionBody(_Body):
    prompt: PromptInput


class EmbeddingBody(_Body):
    input: PromptInput
    encoding_format: Literal["float", "base64"] | None = None


BODY_MODELS: dict[str, type[_Body]] = {
    CHAT_URL: ChatBody,
    COMPLETIONS_URL: CompletionBody,
    EMBEDDINGS_URL: EmbeddingBody,
}


class RequestLine(BaseModel):
    """The envelope of one input line: ``{"custom_id", "method", "url", "body"}``."""

    model_config = ConfigDict(extra="allow")

    custom_id: Annotated[StrictStr, Field(min_length=1, max_length=512)]
    method: StrictStr
    url: StrictStr
    body: dict[str, Any]
