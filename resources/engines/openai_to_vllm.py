"""Turn an OpenAI request body into vLLM engine inputs and parameters.

vLLM's own OpenAI request models (the ones `vllm serve` and `run_batch` use) parse the body
and derive the sampling parameters, so every field means exactly what it means there; the
chat template is applied by the engine's own renderer. A body the engine would answer with
HTTP 400 raises :class:`RequestRejected`.
"""

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from resources.endpoints import (
    CHAT_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    RESPONSES_URL,
    SCORING_URLS,
)
from resources.engines.vllm_scoring import ScoringLayer
from resources.engines.vllm_serving import ServingLayer, ServingRejected
from resources.images import ImagePolicy, fetch_image, is_url

if TYPE_CHECKING:
    from vllm import LLM

# OpenAI's bound on choices per request; vLLM has none, and n=100000 would flood the engine.
MAX_N = 128


class RequestRejected(Exception):
    """The engine refuses this request; becomes a 400 line with an OpenAI error body."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        body: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code
        self.body = body  # vLLM's own error body, when its serving layer refused the request

    @classmethod
    def from_serving(cls, rejected: ServingRejected) -> "RequestRejected":
        error = rejected.body.get("error") or {}
        return cls(str(error.get("message")), error.get("param"), None, rejected.body)

    @classmethod
    def from_engine_error(cls, exc: Exception) -> "RequestRejected":
        """Wrap an error vLLM raised for this request (validation, context length)."""
        message = str(exc)
        code = "context_length_exceeded" if "maximum context length" in message else None
        return cls(message, getattr(exc, "parameter", None), code)

    def error_body(self) -> dict[str, Any]:
        if self.body is not None:
            return self.body
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class PreparedRequest:
    """One body, ready for the engine: one engine request per prompt."""

    endpoint: str
    request: Any  # the vLLM protocol model, kept for building the response
    settings: str = ""  # the body without its messages/prompt/input: what requests share
    inputs: list[Any] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    serving: Any = None  # vLLM's serving state: the answer is built by vLLM's serving layer
    lora: Any = None  # the LoRA adapter the body names (vLLM's LoRARequest), if any


def _prompt_list(value: Any) -> list[Any]:
    """OpenAI's prompt/input forms as a list of engine prompts."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [{"prompt_token_ids": list(value)}]
    return [v if isinstance(v, str) else {"prompt_token_ids": list(v)} for v in value]


# The field that differs from request to request in a batch; the rest (model, sampling
# settings) is usually shared by many lines.
_PER_REQUEST_FIELD = {
    CHAT_URL: "messages",
    COMPLETIONS_URL: "prompt",
    EMBEDDINGS_URL: "input",
    RESPONSES_URL: "input",
}
# Chat fields that only vLLM's serving layer handles (tools and their parser).
_SERVING_FIELDS = ("tools", "tool_choice", "parallel_tool_calls")


def _normalized_messages(messages: list[Any]) -> list[Any]:
    """What vLLM's request model does to messages before validating them."""
    for message in messages:
        if isinstance(message, dict) and "reasoning_content" in message:
            reasoning = message.pop("reasoning_content")
            if reasoning is not None and message.get("reasoning") is None:
                message["reasoning"] = reasoning
    return messages


def _fetch_image_urls(messages: Any, policy: ImagePolicy) -> None:
    """Put each image URL's image in its place as a data: URI, fetched with the policy's
    timeout and size limit (vLLM would fetch it with neither bound); raises RequestRejected."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            image = part.get("image_url") if isinstance(part, dict) else None
            if not isinstance(image, dict):
                continue
            url = image.get("url")
            if isinstance(url, str) and is_url(url):
                try:
                    image["url"] = fetch_image(url, policy)
                except ValueError as error:
                    raise RequestRejected(str(error), "messages", "invalid_image") from error


class RequestBuilder:
    """Prepare bodies for one loaded engine.

    A body is validated with vLLM's own request model the first time its settings (all
    fields but the messages, prompt or input) are seen; later bodies with the same settings
    reuse that validated request with their own messages, and share its sampling parameters
    when their ``max_tokens`` is the same. This keeps the per-request cost near what raw
    ``LLM.chat`` pays, which on a fast engine is what separates the two.
    """

    def __init__(
        self,
        llm: "LLM",
        clamp_max_tokens: bool = False,
        serving: ServingLayer | None = None,
        adapters: dict[str, str] | None = None,
        scoring: ScoringLayer | None = None,
        images: ImagePolicy | None = None,
    ):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingCompletionRequest
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind

        self.llm = llm
        self.clamp_max_tokens = clamp_max_tokens
        # One LoRARequest per adapter, its id fixed for the run (vLLM caches adapters by id).
        self.loras = {
            name: LoRARequest(name, number, path)
            for number, (name, path) in enumerate((adapters or {}).items(), start=1)
        }
        self.serving = serving
        self.scoring = scoring
        self.images = images or ImagePolicy()
        self.max_model_len: int = llm.model_config.max_model_len
        self.defaults: dict[str, Any] = llm.model_config.get_diff_sampling_param()
        self._final_only = RequestOutputKind.FINAL_ONLY
        self._models = {
            CHAT_URL: ChatCompletionRequest,
            COMPLETIONS_URL: CompletionRequest,
            EMBEDDINGS_URL: EmbeddingCompletionRequest,
            RESPONSES_URL: ResponsesRequest,
        }
        self._validated: dict[str, Any] = {}  # settings -> a validated request
        self._params: dict[tuple[str, int], Any] = {}  # (settings, max_tokens) -> params

    def _request(self, endpoint: str, body: dict[str, Any]) -> tuple[Any, str]:
        """vLLM's request model for ``body`` (validated once per settings), and the settings."""
        field = _PER_REQUEST_FIELD[endpoint]
        settings = json.dumps({k: v for k, v in body.items() if k != field}, sort_keys=True)
        known = self._validated.get(settings)
        if known is None or not isinstance(body.get(field), type(getattr(known, field))):
            request = self._models[endpoint].model_validate(body)
            if len(self._validated) < 4096:
                self._validated[settings] = request
            return request, settings
        value = body[field]
        if field == "messages":
            value = _normalized_messages(value)
        return known.model_copy(update={field: value}), settings

    def _served(self, endpoint: str, body: dict[str, Any]) -> bool:
        """Whether vLLM's serving layer renders this request and builds its answer."""
        if self.serving is None:
            return False
        if endpoint == RESPONSES_URL:
            return True
        return endpoint == CHAT_URL and (
            self.serving.has_parsers or any(name in body for name in _SERVING_FIELDS)
        )

    def prepare(self, endpoint: str, body: dict[str, Any]) -> PreparedRequest:
        from vllm.exceptions import VLLMValidationError

        try:
            if endpoint in SCORING_URLS:
                return self._prepare_scoring(endpoint, body)
            if endpoint == CHAT_URL and self.images.allow_urls:
                _fetch_image_urls(body.get("messages"), self.images)
            served = self._served(endpoint, body)
            if served:  # rendering adjusts the request: never share a validated one
                request, settings = self._models[endpoint].model_validate(body), ""
            else:
                request, settings = self._request(endpoint, body)
            if (getattr(request, "n", None) or 1) > MAX_N:
                raise RequestRejected(f"n: must be at most {MAX_N}", "n")
            prepared = PreparedRequest(endpoint, request, settings)
            prepared.lora = self.loras.get(body.get("model"))  # type: ignore[arg-type]
            if served and endpoint == CHAT_URL:
                self._prepare_served_chat(prepared)
            elif served:
                self._prepare_responses(prepared)
            elif endpoint == CHAT_URL:
                self._prepare_chat(prepared)
            elif endpoint == COMPLETIONS_URL:
                self._prepare_completion(prepared)
            else:
                self._prepare_embedding(prepared)
        except RequestRejected:
            raise
        except ServingRejected as exc:
            raise RequestRejected.from_serving(exc) from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            raise RequestRejected(
                f"{param}: {first['msg']}" if param else first["msg"], param
            ) from exc
        except (VLLMValidationError, ValueError, TypeError, KeyError) as exc:
            raise RequestRejected.from_engine_error(exc) from exc
        return prepared

    def _prepare_scoring(self, endpoint: str, body: dict[str, Any]) -> PreparedRequest:
        """Score and rerank: rendered by vLLM's ServingScores, as vllm serve renders them."""
        assert self.scoring is not None
        request = self.scoring.request(endpoint, body)
        prepared = PreparedRequest(endpoint, request)
        prepared.serving, prepared.inputs, prepared.params = self.scoring.render(request)
        prepared.lora = self.loras.get(body.get("model"))  # type: ignore[arg-type]
        return prepared

    def _max_tokens(self, prompt_len: int, requested: int | None) -> int:
        if prompt_len > self.max_model_len:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your prompt has {prompt_len} tokens. Please reduce the length of the prompt.",
                "messages",
                "context_length_exceeded",
            )
        room = self.max_model_len - prompt_len
        if requested is None:
            requested = self.defaults.get("max_tokens")
        if requested is not None and requested > room and not self.clamp_max_tokens:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
                f"{requested} for the completion). Please reduce the prompt or max_tokens.",
                "max_tokens",
                "context_length_exceeded",
            )
        return room if requested is None else min(requested, room)

    def _sampling(self, prepared: PreparedRequest, prompt_len: int, requested: int | None) -> Any:
        max_tokens = self._max_tokens(prompt_len, requested)
        key = (prepared.settings, max_tokens)
        params = self._params.get(key)
        if params is None:
            params = prepared.request.to_sampling_params(max_tokens, self.defaults)
            params.output_kind = self._final_only
            if len(self._params) < 4096:
                self._params[key] = params  # vLLM clones a request's params as it adds it
        return params

    def _prepare_chat(self, prepared: PreparedRequest) -> None:
        request = prepared.request
        tools = [t.model_dump(exclude_none=True) for t in request.tools] if request.tools else None
        engine_input = self.llm._preprocess_chat_one(
            request.messages,
            chat_template=request.chat_template,
            chat_template_kwargs=request.chat_template_kwargs,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            tools=tools,
        )
        requested = (
            request.max_completion_tokens
            if request.max_completion_tokens is not None
            else request.max_tokens
        )
        prompt_len = len(engine_input["prompt_token_ids"])
        prepared.inputs.append(engine_input)
        prepared.params.append(self._sampling(prepared, prompt_len, requested))

    def _final_params(self, request: Any, max_tokens: int) -> Any:
        params = request.to_sampling_params(max_tokens, self.defaults)
        params.output_kind = self._final_only
        return params

    def _prepare_served_chat(self, prepared: PreparedRequest) -> None:
        """Tools or parsers: rendered by vLLM's OnlineRenderer, as vllm serve renders it
        (``tool_choice`` checks, the structured output of ``required`` or a named tool)."""
        assert self.serving is not None
        request = prepared.request
        prepared.serving, engine_inputs = self.serving.render_chat(request)
        (engine_input,) = engine_inputs
        requested = (
            request.max_completion_tokens
            if request.max_completion_tokens is not None
            else request.max_tokens
        )
        max_tokens = self._max_tokens(len(engine_input["prompt_token_ids"]), requested)
        prepared.inputs.append(engine_input)
        prepared.params.append(self._final_params(request, max_tokens))

    def _prepare_responses(self, prepared: PreparedRequest) -> None:
        assert self.serving is not None
        request = prepared.request
        engine_input = self.serving.render_responses(request)
        prompt_len = len(engine_input["prompt_token_ids"])
        if prompt_len >= self.max_model_len:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"your input has {prompt_len} tokens. Please reduce the input.",
                "input",
                "context_length_exceeded",
            )
        params = self._final_params(
            request, self._max_tokens(prompt_len, request.max_output_tokens)
        )
        prepared.inputs.append(engine_input)
        prepared.params.append(params)
        prepared.serving = self.serving.responses_state(request, params, engine_input)

    def _prepare_completion(self, prepared: PreparedRequest) -> None:
        request = prepared.request
        if request.suffix:
            raise RequestRejected("suffix is not supported", "suffix")
        for prompt in _prompt_list(request.prompt):
            engine_input = self.llm._preprocess_cmpl_one(prompt)
            prompt_len = len(engine_input["prompt_token_ids"])
            prepared.inputs.append(engine_input)
            prepared.params.append(self._sampling(prepared, prompt_len, request.max_tokens))

    def _prepare_embedding(self, prepared: PreparedRequest) -> None:
        request = prepared.request
        for prompt in _prompt_list(request.input):
            engine_input = self.llm._preprocess_cmpl_one(prompt)
            prompt_len = len(engine_input["prompt_token_ids"])
            if prompt_len > self.max_model_len:
                raise RequestRejected(
                    f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, your input has {prompt_len} tokens.",
                    "input",
                    "context_length_exceeded",
                )
            prepared.inputs.append(engine_input)
            prepared.params.append(request.to_pooling_params())
