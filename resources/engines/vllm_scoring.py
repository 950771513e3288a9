"""vLLM's scoring layer (``/v1/score``, ``/v1/rerank``) over the pooling engine in this process.

``ServingScores``, the class ``vllm serve`` and ``vllm run-batch`` answer these endpoints with,
renders a request into its engine inputs (the query and each document, or each pair for a
cross-encoder) and builds the answer from the finished outputs (cosine similarities for an
embedding model, the classifier's scores for a cross-encoder); only the engine step is this
project's, as for the other endpoints.
"""

import json
from dataclasses import dataclass
from typing import Any

from resources.endpoints import SCORE_URL
from resources.engines.vllm_serving import ServingRejected, ThreadLoops, serving_models


@dataclass
class ScoringState:
    """What the answer is built from, besides the engine's outputs."""

    io_processor: Any
    context: Any


class ScoringLayer:
    """vLLM's ``ServingScores`` for one loaded pooling ``LLM``."""

    def __init__(self, llm: Any, served_model_name: str):
        from pydantic import TypeAdapter
        from vllm.entrypoints.pooling.scoring.protocol import RerankRequest, ScoreRequest
        from vllm.entrypoints.pooling.scoring.serving import ServingScores
        from vllm.renderers.chat_utils import ChatTemplateConfig

        engine = llm.llm_engine
        self.model_name = served_model_name
        self.serving = ServingScores(
            engine,
            serving_models(engine, served_model_name),
            supported_tasks=engine.get_supported_tasks(),
            request_logger=None,
            chat_template_config=ChatTemplateConfig(),
        )
        self._score = TypeAdapter(ScoreRequest)
        self._rerank = RerankRequest
        self._run = ThreadLoops().run

    def request(self, endpoint: str, body: dict[str, Any]) -> Any:
        """vLLM's request model for ``body`` (raises pydantic's ValidationError).

        The model is set to the served name: the line's own name (an alias, an adapter) was
        checked at validation, and an adapter is applied by the engine loop.
        """
        body = {**body, "model": self.model_name}
        if endpoint == SCORE_URL:
            return self._score.validate_python(body)
        return self._rerank.model_validate(body)

    def render(self, request: Any) -> tuple[ScoringState, list[Any], list[Any]]:
        """The request's engine prompts and their pooling parameters, rendered as vllm serve
        renders them."""
        serving = self.serving
        io_processor = serving.get_io_processor(request)

        async def render() -> Any:
            context = await serving._init_ctx(io_processor, request, None)
            await serving._preprocessing(io_processor, context)
            return context

        try:
            context = self._run(render())
        except ValueError as error:  # e.g. no documents, or a prompt over the context
            raise ServingRejected(_error_body(str(error)), 400) from error
        inputs = context.engine_inputs
        return (
            ScoringState(io_processor, context),
            [item["prompts"] for item in inputs],
            [item["params"] for item in inputs],
        )

    def body(self, state: ScoringState, outputs: list[Any], model: str) -> dict[str, Any]:
        """vllm serve's score or rerank body for the finished ``outputs``, in input order."""
        context = state.context
        context.final_res_batch = outputs
        context.model_name = model
        response = self.serving._postprocessing(state.io_processor, context)
        return json.loads(response.body)


def _error_body(message: str) -> dict[str, Any]:
    error = {"message": message, "type": "BadRequestError", "param": None, "code": 400}
    return {"error": error}
