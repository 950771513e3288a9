"""vLLM's own OpenAI serving layer, over the engine in this process.

For what ``vllm serve`` does beyond sampling: tools (``tool_choice`` checks, the structured
output that ``required`` and a named function add, the tool-call parser), reasoning (the
reasoning parser, its token count) and the ``/v1/responses`` endpoint. The request is
rendered by vLLM's ``OnlineRenderer`` and the answer built by ``OpenAIServingChat`` and
``OpenAIServingResponses`` from the engine's finished output, exactly as the server builds
them; only the engine step is this project's. Built as ``vllm serve`` builds them
(``vllm/entrypoints/generate/api_router.py``), with its defaults, except that cached prompt
tokens are reported (``--enable-prompt-tokens-details``), as OpenAI reports them.
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


class ThreadLoops:
    """An event loop per thread, to run vLLM's async serving code to completion from sync code
    (the request feed and the engine loop run in different threads)."""

    def __init__(self) -> None:
        self._loops = threading.local()

    def run(self, coroutine: Awaitable[T]) -> T:
        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(coroutine)


def serving_models(engine: Any, served_model_name: str) -> Any:
    """vLLM's ``OpenAIServingModels`` of the engine under its served name, as vllm serve
    builds it for its serving classes (adapters are applied by this project's loop)."""
    from vllm.entrypoints.openai.models.protocol import BaseModelPath
    from vllm.entrypoints.openai.models.serving import OpenAIServingModels

    path = BaseModelPath(name=served_model_name, model_path=engine.model_config.model)
    return OpenAIServingModels(engine, [path])


class ServingRejected(Exception):
    """vLLM's serving layer answered with an error (what ``vllm serve`` would answer)."""

    def __init__(self, body: dict[str, Any], status: int):
        super().__init__(body.get("error", {}).get("message", "rejected"))
        self.body, self.status = body, status


@dataclass
class ChatState:
    """What the chat answer is built from, besides the engine's output."""

    conversation: list[Any]
    parser: Any


@dataclass
class ResponsesState:
    sampling_params: Any
    context: Any


class ServingLayer:
    """vLLM's renderer and answer builders for one loaded ``LLM``."""

    def __init__(
        self,
        llm: Any,
        served_model_name: str,
        tool_call_parser: str | None,
        enable_auto_tool_choice: bool,
        reasoning_parser: str | None,
    ):
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.responses.serving import OpenAIServingResponses
        from vllm.renderers.online_renderer import OnlineRenderer

        # The LLMEngine has what the serving classes read of an engine client (model and vLLM
        # config, renderer, input processor); they never generate through it here.
        engine = llm.llm_engine
        self.tokenizer = engine.renderer.tokenizer
        self.has_parsers = bool(reasoning_parser or (tool_call_parser and enable_auto_tool_choice))
        models = serving_models(engine, served_model_name)
        common: dict[str, Any] = {
            "request_logger": None,
            "chat_template": None,
            "chat_template_content_format": "auto",
            "enable_auto_tools": enable_auto_tool_choice,
            "tool_parser": tool_call_parser,
            "reasoning_parser": reasoning_parser or "",
        }
        self.renderer = OnlineRenderer(
            engine.model_config,
            engine.renderer,
            request_logger=None,
            chat_template=None,
            chat_template_content_format="auto",
            enable_auto_tools=enable_auto_tool_choice,
            tool_parser=tool_call_parser,
            reasoning_parser=reasoning_parser,
        )
        self.chat = OpenAIServingChat(
            engine,
            models,
            "assistant",
            online_renderer=self.renderer,
            enable_prompt_tokens_details=True,
            **common,
        )
        self.responses = OpenAIServingResponses(
            engine,
            models,
            self.renderer,
            enable_prompt_tokens_details=True,
            **common,
        )
        self._run = ThreadLoops().run

    @staticmethod
    def _rejected(answer: Any) -> ServingRejected:
        return ServingRejected(answer.model_dump(mode="json"), int(answer.error.code))

    # -- chat --------------------------------------------------------------------------------

    def render_chat(self, request: Any) -> tuple[ChatState, list[Any]]:
        """The engine inputs of a chat request, rendered (and adjusted) as vllm serve does."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        rendered = self._run(self.renderer.render_chat(request))
        if isinstance(rendered, ErrorResponse):
            raise self._rejected(rendered)
        conversation, engine_inputs = rendered
        parser = None
        if self.chat.parser_cls is not None:
            kwargs = self.chat._effective_chat_template_kwargs(request)
            parser = self.chat._make_parser(request, self.tokenizer, kwargs)
        return ChatState(conversation, parser), engine_inputs

    def chat_body(
        self, request: Any, state: ChatState, output: Any, request_id: str, model: str
    ) -> dict:
        """vllm serve's chat.completion body for the engine's finished ``output``."""
        from vllm.entrypoints.generate.base.protocol import RequestResponseMetadata
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        answer = self._run(
            self.chat.chat_completion_full_generator(
                request,
                _once(output),
                request_id,
                model,
                state.conversation,
                self.tokenizer,
                RequestResponseMetadata(request_id=request_id),
                parser=state.parser,
            )
        )
        if isinstance(answer, ErrorResponse):
            raise self._rejected(answer)
        return answer.model_dump()

    # -- responses ---------------------------------------------------------------------------

    def render_responses(self, request: Any) -> Any:
        """The engine input of a Responses request, rendered as vllm serve does."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        request.store = False  # nothing is kept in the server's memory between requests
        if request.previous_response_id is not None:  # nothing is stored to continue from
            raise self._rejected(self.responses._make_not_found_error(request.previous_response_id))
        problem = self.responses._validate_create_responses_input(request)
        if problem is not None:
            raise self._rejected(problem)
        rendered = self._run(self.responses._render_resolved_response_inputs(request, None))
        if isinstance(rendered, ErrorResponse):
            raise self._rejected(rendered)
        return rendered.engine_input

    def responses_state(self, request: Any, sampling_params: Any, engine_input: Any) -> Any:
        from vllm.entrypoints.openai.responses.context import SimpleContext

        kwargs = self.responses._effective_chat_template_kwargs(request)
        parser = self.responses._make_response_parser(request, self.tokenizer, kwargs)
        if parser is not None and engine_input.get("prompt_token_ids") is not None:
            parser.set_prompt_token_ids(engine_input["prompt_token_ids"])
        return ResponsesState(sampling_params, SimpleContext(response_parser=parser))

    def responses_body(
        self, request: Any, state: ResponsesState, output: Any, request_id: str, model: str
    ) -> dict:
        """vllm serve's Response body for the engine's finished ``output``."""
        from vllm.entrypoints.generate.base.protocol import RequestResponseMetadata
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        request.request_id = request_id
        state.context.append_output(output)
        answer = self._run(
            self.responses.responses_full_generator(
                request,
                state.sampling_params,
                _once(state.context),
                state.context,
                model,
                self.tokenizer,
                RequestResponseMetadata(request_id=request.request_id),
            )
        )
        if isinstance(answer, ErrorResponse):
            raise self._rejected(answer)
        return answer.model_dump(mode="json", by_alias=True)


async def _once(item: T) -> AsyncIterator[T]:
    yield item
