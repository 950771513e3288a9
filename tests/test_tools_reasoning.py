"""Tool calls, reasoning and /v1/responses, in-process and through `vllm serve`, on the real engine.

The generated model's weights are random, so what it says is forced where it matters: by the
structured output that ``tool_choice`` ``required`` or a named function adds (as vLLM does),
or by a request's own ``structured_outputs`` regex. The answers are then parsed by vLLM's own
hermes tool parser and qwen3 reasoning parser, in this process and in a `vllm serve` started
here with the same parsers; pool mode journals that server's own bodies, so comparing the
two batches compares us with `vllm serve`.
"""

import json

import openai.types.chat as oc
import pytest
from openai.types.responses import Response

from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine
from tests.conftest import MODEL_NAME, chat_body, request_line
from tests.vllm_servers import VLLMServer, start_all

pytestmark = pytest.mark.slow

# Random weights love whitespace: structured output without free whitespace (JSON schemas),
# and whitespace tokens banned by logit_bias inside forced tool arguments, keep what is
# forced short enough to finish.
TOOLS = {
    "tool_call_parser": "hermes",
    "enable_auto_tool_choice": True,
    "disable_any_whitespace": True,
}
REASONING = {"reasoning_parser": "qwen3"}
TOOL_FLAGS = [
    "--enable-auto-tool-choice",
    "--tool-call-parser",
    "hermes",
    "--structured-outputs-config.backend",
    "xgrammar",
    "--structured-outputs-config.disable_any_whitespace",
    "true",
]
# In-process, a request's structured output applies from its first token, the thinking
# included; vLLM's server lets a reasoning model think freely unless told this.
REASONING_FLAGS = [
    "--reasoning-parser",
    "qwen3",
    "--structured-outputs-config.enable_in_reasoning",
    "true",
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
HERMES_CALL = (
    r'<tool_call>\{"name": "get_weather", "arguments": \{"city": "(Paris|Oslo)"\}\}</tool_call>'
)


def _no_whitespace(tokenizer) -> dict[str, int]:
    """logit_bias that bans the tokens that are only whitespace."""
    return {
        str(i): -100
        for i in range(len(tokenizer))
        if tokenizer.decode([i]) and not tokenizer.decode([i]).strip()
    }


def _tool_lines(tokenizer) -> list[str]:
    tools = [WEATHER]
    ban = _no_whitespace(tokenizer)
    bodies = {
        "named": chat_body(
            "weather in paris?",
            max_tokens=100,
            tools=tools,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            logit_bias=ban,
        ),
        "required": chat_body(
            "what time is it?",
            max_tokens=120,
            tools=[TIME],
            tool_choice="required",
            logit_bias=ban,
        ),
        "required-one": chat_body(
            "time and weather",
            max_tokens=160,
            tools=tools,
            tool_choice="required",
            parallel_tool_calls=False,
            logit_bias=ban,
        ),
        "auto-forced": chat_body(
            "weather in oslo?",
            max_tokens=100,
            tools=[{**WEATHER, "function": {**WEATHER["function"], "strict": False}}],
            tool_choice="auto",
            structured_outputs={"regex": HERMES_CALL},
        ),
        "none": chat_body("hello", max_tokens=6, tools=tools, tool_choice="none"),
        "plain": chat_body("hello world", max_tokens=8),
    }
    return [request_line(custom_id, body) for custom_id, body in bodies.items()]


def _reasoning_lines() -> list[str]:
    bodies = {
        "think": chat_body(
            "think first",
            max_tokens=30,
            structured_outputs={"regex": "<think>[a-z ]{3,20}</think>[a-z ]{3,20}"},
        ),
        "plain": chat_body("hello world", max_tokens=8),
    }
    return [request_line(custom_id, body) for custom_id, body in bodies.items()]


def _responses_lines() -> list[str]:
    url = "/v1/responses"
    bodies = {
        "text": {
            "model": MODEL_NAME,
            "input": "hello there",
            "max_output_tokens": 8,
            "temperature": 0,
        },
        "items": {
            "model": MODEL_NAME,
            "instructions": "answer briefly",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "why"}]}],
            "max_output_tokens": 12,
            "temperature": 0,
            "top_p": 1.0,
        },
        "json": {
            "model": MODEL_NAME,
            "input": "give a city",
            "max_output_tokens": 30,
            "temperature": 0,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "city",
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                        "required": ["city"],
                        "additionalProperties": False,
                    },
                }
            },
        },
        "tool": {
            "model": MODEL_NAME,
            "input": "weather?",
            "max_output_tokens": 60,
            "temperature": 0,
            "tools": [{"type": "function", **WEATHER["function"]}],
            "tool_choice": "required",
        },
        "reasoning": {
            "model": MODEL_NAME,
            "input": "think about it",
            "max_output_tokens": 8,
            "temperature": 0,
            "reasoning": {"effort": "low"},
        },
    }
    return [request_line(custom_id, body, url=url) for custom_id, body in bodies.items()]


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory) -> dict[str, VLLMServer]:
    """`vllm serve` on the same model, once with the tool parser, once with the reasoning one."""
    logs = tmp_path_factory.mktemp("vllm-parsers")
    started = {
        "tools": VLLMServer(tiny_model, logs, extra=TOOL_FLAGS),
        "reasoning": VLLMServer(tiny_model, logs, extra=REASONING_FLAGS),
    }
    start_all(list(started.values()))
    yield started
    for server in started.values():
        server.stop()


def _engines(
    engine: VLLMEngine, fields: dict, server: VLLMServer
) -> tuple[VLLMEngine, VLLMServerPool]:
    """The engine of this session with ``fields`` (the same loaded model), and pool mode on
    ``server`` (started with the same fields)."""
    ours = VLLMEngine(**{**engine.model_dump(), **fields})
    shared = {k: v for k, v in ours.model_dump().items() if k in VLLMServerPool.model_fields}
    return ours, VLLMServerPool(**shared, engine_urls=[server.url])


def _chat(run, custom_id: str) -> oc.ChatCompletion:
    line = run.by_id()[custom_id]
    assert line["response"]["status_code"] == 200, line
    return oc.ChatCompletion.model_validate(line["response"]["body"], strict=True)


def _calls(completion: oc.ChatCompletion) -> list[tuple[str, dict]]:
    calls = completion.choices[0].message.tool_calls or []
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def _same_chat(ours, theirs) -> None:
    """The same calls, texts, reasons and counts in both batches, line by line."""
    assert ours.by_id().keys() == theirs.by_id().keys()
    for custom_id in ours.by_id():
        a, b = _chat(ours, custom_id), _chat(theirs, custom_id)
        assert _calls(a) == _calls(b), custom_id
        ma, mb = a.choices[0].message.model_dump(), b.choices[0].message.model_dump()
        assert (ma["content"], ma.get("reasoning")) == (mb["content"], mb.get("reasoning")), (
            custom_id
        )
        assert a.choices[0].finish_reason == b.choices[0].finish_reason, custom_id
        assert a.usage.prompt_tokens == b.usage.prompt_tokens, custom_id
        assert a.usage.completion_tokens == b.usage.completion_tokens, custom_id


def test_tool_calls_come_back_parsed_in_process_as_through_vllm_serve(
    run_batch, engine, servers, tiny_model
):
    from transformers import AutoTokenizer

    content = "\n".join(_tool_lines(AutoTokenizer.from_pretrained(tiny_model))) + "\n"
    local, pool = _engines(engine, TOOLS, servers["tools"])
    ours = run_batch(content, name="tools.jsonl", engine_override=local)
    theirs = run_batch(content, name="tools-pool.jsonl", engine_override=pool)
    for run in (ours, theirs):
        assert run.batch["status"] == "completed", run.batch
        assert run.batch["request_counts"] == {"total": 6, "completed": 6, "failed": 0}, run.errors

        named = _chat(run, "named")
        assert [name for name, _ in _calls(named)] == ["get_weather"]
        assert _calls(named)[0][1]["city"] in ("Paris", "Oslo")
        assert named.choices[0].finish_reason == "stop"  # a named tool: "stop", as vLLM does
        call = named.choices[0].message.tool_calls[0]
        assert call.id and call.type == "function"

        required = _chat(run, "required")
        assert required.choices[0].finish_reason == "tool_calls"
        assert _calls(required)
        assert {name for name, _ in _calls(required)} == {"get_time"}
        assert len(_calls(_chat(run, "required-one"))) == 1  # parallel_tool_calls=false

        auto = _chat(run, "auto-forced")  # the hermes parser reads <tool_call>JSON</tool_call>
        assert _calls(auto) and _calls(auto)[0][0] == "get_weather"
        assert auto.choices[0].finish_reason == "tool_calls"

        assert not _calls(_chat(run, "none"))
        assert _chat(run, "plain").choices[0].message.content
    _same_chat(ours, theirs)


def test_a_reasoning_parser_splits_a_forced_think_answer_as_vllm_serve_does(
    run_batch, engine, servers
):
    content = "\n".join(_reasoning_lines()) + "\n"
    local, pool = _engines(engine, REASONING, servers["reasoning"])
    ours = run_batch(content, name="think.jsonl", engine_override=local)
    theirs = run_batch(content, name="think-pool.jsonl", engine_override=pool)
    for run in (ours, theirs):
        assert run.batch["status"] == "completed", run.batch
        think = _chat(run, "think")
        message = think.choices[0].message.model_dump()
        assert message["reasoning"] and message["content"], message
        assert "think>" not in message["content"] + message["reasoning"]
        assert think.usage.completion_tokens_details.reasoning_tokens > 0
        reasoning = sum(
            _chat(run, cid).usage.completion_tokens_details.reasoning_tokens for cid in run.by_id()
        )
        # The batch sums every line's thinking.
        assert run.batch["usage"]["output_tokens_details"]["reasoning_tokens"] == reasoning
    _same_chat(ours, theirs)


def test_tools_without_a_parser_get_the_400_line_vllm_serve_gives(run_batch, engine):
    lines = [
        request_line("auto", chat_body("weather?", tools=[WEATHER])),
        request_line("required", chat_body("weather?", tools=[WEATHER], tool_choice="required")),
        request_line("plain", chat_body("hello")),
    ]
    run = run_batch("\n".join(lines) + "\n", name="no-parser.jsonl", engine_override=engine)
    assert run.batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    found = run.by_id()
    auto = found["auto"]["response"]
    assert auto["status_code"] == 400
    assert auto["body"]["error"]["message"] == (
        '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
    )
    required = found["required"]["response"]
    assert required["status_code"] == 400
    assert (
        'tool_choice="required" requires --tool-call-parser'
        in (required["body"]["error"]["message"])
    )
    assert found["plain"]["response"]["status_code"] == 200


def test_a_responses_batch_answers_with_valid_responses_like_vllm_serve(run_batch, engine, servers):
    content = "\n".join(_responses_lines()) + "\n"
    local, pool = _engines(engine, TOOLS, servers["tools"])
    ours = run_batch(content, name="responses.jsonl", engine_override=local)
    theirs = run_batch(content, name="responses-pool.jsonl", engine_override=pool)
    for run in (ours, theirs):
        assert run.batch["status"] == "completed", run.batch
        assert run.batch["endpoint"] == "/v1/responses"
        assert run.batch["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
        bodies = {}
        for custom_id, line in run.by_id().items():
            assert line["response"]["status_code"] == 200, line
            bodies[custom_id] = Response.model_validate(line["response"]["body"])
        for body in bodies.values():
            assert body.object == "response" and body.model == MODEL_NAME
            assert body.usage and body.usage.input_tokens > 0 and body.usage.output_tokens > 0
        assert bodies["text"].output_text
        assert bodies["text"].status == "incomplete"  # max_output_tokens reached
        assert json.loads(bodies["json"].output_text)["city"] in ("Paris", "Oslo")
        assert bodies["json"].status == "completed"
        usage = run.batch["usage"]
        assert usage["input_tokens"] == sum(b.usage.input_tokens for b in bodies.values())
        assert usage["output_tokens"] == sum(b.usage.output_tokens for b in bodies.values())

    for custom_id in ours.by_id():
        a = Response.model_validate(ours.by_id()[custom_id]["response"]["body"])
        b = Response.model_validate(theirs.by_id()[custom_id]["response"]["body"])
        assert [item.type for item in a.output] == [item.type for item in b.output], custom_id
        assert a.output_text == b.output_text, custom_id
        assert a.status == b.status, custom_id
        assert (a.usage.input_tokens, a.usage.output_tokens) == (
            b.usage.input_tokens,
            b.usage.output_tokens,
        ), custom_id
