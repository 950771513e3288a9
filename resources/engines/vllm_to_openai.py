"""Turn finished vLLM outputs into OpenAI response bodies (chat, completion, embeddings)."""

import base64
import math
from typing import Any

import numpy as np

from resources.endpoints import CHAT_URL, COMPLETIONS_URL, RESPONSES_URL, SCORING_URLS
from resources.engines.openai_to_vllm import PreparedRequest
from resources.engines.vllm_scoring import ScoringLayer
from resources.engines.vllm_serving import ServingLayer

# vLLM reports -inf for impossible tokens; JSON has no infinity, so clamp as vLLM's server does.
_MIN_LOGPROB = -9999.0


def _logprob(value: float) -> float:
    return max(value, _MIN_LOGPROB) if math.isfinite(value) else _MIN_LOGPROB


def _finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


class ResponseBuilder:
    """Build response bodies for one engine; ``tokenizer`` decodes logprob tokens."""

    def __init__(
        self,
        model_name: str,
        tokenizer: Any,
        serving: ServingLayer | None = None,
        scoring: ScoringLayer | None = None,
    ):
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.serving = serving
        self.scoring = scoring

    def _token_text(self, token_id: int, decoded: str | None) -> str:
        return decoded if decoded is not None else self.tokenizer.decode([token_id])

    def _ranked(self, step: dict[int, Any], top: int) -> list[tuple[int, Any]]:
        return sorted(step.items(), key=lambda kv: kv[1].rank)[:top]

    def _chat_logprobs(self, completion: Any, top: int) -> dict[str, Any]:
        content = []
        for token_id, step in zip(completion.token_ids, completion.logprobs, strict=False):
            chosen = step[token_id]
            token = self._token_text(token_id, chosen.decoded_token)
            content.append(
                {
                    "token": token,
                    "logprob": _logprob(chosen.logprob),
                    "bytes": list(token.encode("utf-8", errors="replace")),
                    "top_logprobs": [
                        {
                            "token": (t := self._token_text(tid, lp.decoded_token)),
                            "logprob": _logprob(lp.logprob),
                            "bytes": list(t.encode("utf-8", errors="replace")),
                        }
                        for tid, lp in self._ranked(step, top)
                    ],
                }
            )
        return {"content": content, "refusal": None}

    def _completion_logprobs(self, completion: Any, top: int, offset: int) -> dict[str, Any]:
        tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
        for token_id, step in zip(completion.token_ids, completion.logprobs, strict=False):
            chosen = step[token_id]
            token = self._token_text(token_id, chosen.decoded_token)
            tokens.append(token)
            token_logprobs.append(_logprob(chosen.logprob))
            top_logprobs.append(
                {
                    self._token_text(tid, lp.decoded_token): _logprob(lp.logprob)
                    for tid, lp in self._ranked(step, top)
                }
            )
            text_offset.append(offset)
            offset += len(token)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs,
            "text_offset": text_offset,
        }

    @staticmethod
    def _usage(outputs: list[Any]) -> dict[str, Any]:
        prompt = sum(len(o.prompt_token_ids or ()) for o in outputs)
        completion = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        cached = sum(o.num_cached_tokens or 0 for o in outputs)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def build(
        self, prepared: PreparedRequest, outputs: list[Any], response_id: str, created: int
    ) -> dict[str, Any]:
        """The response body for ``prepared`` from its finished engine outputs, in order.

        A request that vLLM's serving layer rendered (tools, parsers, Responses) gets the
        body that layer builds, ``vllm serve``'s own.
        """
        # vllm serve reports an adapter's answers under the adapter's name.
        model = prepared.lora.lora_name if prepared.lora is not None else self.model_name
        if prepared.endpoint in SCORING_URLS:
            assert self.scoring is not None
            body = self.scoring.body(prepared.serving, outputs, model)
            body["id"] = f"score-{response_id}"  # vLLM's prefix for both, with a stable id
            if "created" in body:
                body["created"] = created
            return body
        if prepared.serving is not None:
            assert self.serving is not None
            if prepared.endpoint == RESPONSES_URL:
                return self.serving.responses_body(
                    prepared.request, prepared.serving, outputs[0], f"resp_{response_id}", model
                )
            body = self.serving.chat_body(
                prepared.request, prepared.serving, outputs[0], f"chatcmpl-{response_id}", model
            )
            body["created"] = created
            return body
        if prepared.endpoint == CHAT_URL:
            return self._chat(prepared, outputs[0], response_id, created, model)
        if prepared.endpoint == COMPLETIONS_URL:
            return self._completion(prepared, outputs, response_id, created, model)
        return self._embedding(prepared, outputs, model)

    def _chat(
        self, prepared: PreparedRequest, output: Any, response_id: str, created: int, model: str
    ) -> dict[str, Any]:
        request = prepared.request
        want_logprobs = bool(request.logprobs)
        top = request.top_logprobs or 0
        choices = []
        for completion in output.outputs:
            choices.append(
                {
                    "index": completion.index,
                    "message": {
                        "role": "assistant",
                        "content": completion.text,
                        "refusal": None,
                        "tool_calls": [],
                    },
                    "logprobs": (
                        self._chat_logprobs(completion, top)
                        if want_logprobs and completion.logprobs is not None
                        else None
                    ),
                    "finish_reason": _finish_reason(completion.finish_reason),
                }
            )
        return {
            "id": f"chatcmpl-{response_id}",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self._usage([output]),
        }

    def _completion(
        self,
        prepared: PreparedRequest,
        outputs: list[Any],
        response_id: str,
        created: int,
        model: str,
    ) -> dict[str, Any]:
        request = prepared.request
        choices = []
        for prompt_index, output in enumerate(outputs):
            prefix = (output.prompt or "") if request.echo else ""
            for completion in output.outputs:
                choices.append(
                    {
                        "index": prompt_index * request.n + completion.index,
                        "text": prefix + completion.text,
                        "logprobs": (
                            self._completion_logprobs(completion, request.logprobs, len(prefix))
                            if request.logprobs is not None and completion.logprobs is not None
                            else None
                        ),
                        "finish_reason": _finish_reason(completion.finish_reason),
                    }
                )
        return {
            "id": f"cmpl-{response_id}",
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "system_fingerprint": None,
            "usage": self._usage(outputs),
        }

    def _embedding(
        self, prepared: PreparedRequest, outputs: list[Any], model: str
    ) -> dict[str, Any]:
        as_base64 = prepared.request.encoding_format == "base64"
        data = []
        for index, output in enumerate(outputs):
            vector = output.outputs.data.float().cpu().numpy().astype(np.float32)
            embedding: Any = (
                base64.b64encode(vector.tobytes()).decode() if as_base64 else vector.tolist()
            )
            data.append({"object": "embedding", "embedding": embedding, "index": index})
        prompt = sum(len(o.prompt_token_ids or ()) for o in outputs)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
