"""What a line's body.model may name: a LoRA adapter, or another model of the pool.

Each answer is checked against a real ``vllm serve`` answering the same body: in-process with
the adapter loaded by the engine, and in pool mode over servers that serve different names.
"""

import sys
from pathlib import Path

import httpx
import openai.types.chat as oc
import pytest

from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine
from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, ROOT, chat_body, request_line
from tests.vllm_servers import VLLMServer, start_all

sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_model import build, build_lora

pytestmark = pytest.mark.slow
ADAPTER = "tiny-lora"
OTHER_MODEL = "tiny-b"


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return build_lora(tiny_model, tmp_path_factory.mktemp("lora") / ADAPTER)


@pytest.fixture(scope="module")
def servers(tiny_model, adapter, tmp_path_factory):
    """The tiny model with the adapter, without it, and a second tiny model (other weights and
    tokenizer): started together."""
    logs = tmp_path_factory.mktemp("vllm-servers")
    other = build(tmp_path_factory.mktemp("models") / OTHER_MODEL, seed=1)
    # Two slots for one adapter: vLLM 0.32's CPU LoRA ops give a base-model request batched
    # with adapter requests the adapter in the last slot (index -1), so that slot stays empty
    # (resources/engines/inference_loop.py keeps the in-process engine clear of it).
    lora = [
        *("--enable-lora", "--lora-modules", f"{ADAPTER}={adapter}"),
        *("--max-lora-rank", "8", "--max-loras", "2"),
    ]
    trio = [
        VLLMServer(tiny_model, logs, extra=lora),
        VLLMServer(tiny_model, logs),
        VLLMServer(other, logs, served_model_name=OTHER_MODEL),
    ]
    start_all(trio)
    yield trio
    for server in trio:
        server.stop()


def _served(server: VLLMServer, body: dict) -> tuple[int, dict]:
    """What ``vllm serve`` answers to ``body``."""
    answer = httpx.post(f"{server.url}/chat/completions", json=body, timeout=120)
    return answer.status_code, answer.json()


def _lines(models: list[str]) -> list[tuple[str, dict]]:
    """One greedy chat line per model name, each with a prompt of its own."""
    return [
        (f"line-{i}", chat_body(f"tell me about {i} rivers", model=model, max_tokens=12))
        for i, model in enumerate(models)
    ]


def _content(lines: list[tuple[str, dict]]) -> str:
    return "".join(request_line(cid, body) + "\n" for cid, body in lines)


def _check_answers(run, lines, expected: dict[str, dict]) -> None:
    answered = {line["custom_id"]: line["response"]["body"] for line in run.output}
    assert set(answered) == set(expected)
    for cid, body in lines:
        if cid not in expected:
            continue
        ours, theirs = answered[cid], expected[cid]
        oc.ChatCompletion.model_validate(ours)
        assert ours["model"] == body["model"]  # an adapter's answer names the adapter
        assert (
            ours["choices"][0]["message"]["content"] == (theirs["choices"][0]["message"]["content"])
        ), cid
        assert ours["usage"]["completion_tokens"] == theirs["usage"]["completion_tokens"]


def test_a_batch_mixing_base_and_adapter_lines_answers_each_as_vllm_serve(
    run_batch, tiny_model, adapter, servers
):
    with_adapter = servers[0]
    lines = _lines([MODEL_NAME, ADAPTER] * 6 + ["not-an-adapter"])
    engine = VLLMEngine(
        model=str(tiny_model),
        served_model_name=MODEL_NAME,
        max_model_len=MAX_MODEL_LEN,
        keep_loaded=True,
        lora_modules=[f"{ADAPTER}={adapter}"],
        max_lora_rank=8,
        max_loras=1,  # one slot: the adapter is swapped in and out as the lines need it
    )
    run = run_batch(_content(lines), engine_override=engine)
    expected = {cid: _served(with_adapter, body) for cid, body in lines}
    assert [status for status, _ in expected.values()] == [200] * 12 + [404]
    _check_answers(run, lines, {cid: body for cid, (code, body) in expected.items() if code == 200})
    # The adapter changes answers (else this test could not tell them apart).
    plain = _served(servers[1], {**lines[1][1], "model": MODEL_NAME})[1]
    tuned = expected["line-1"][1]
    assert plain["choices"][0]["message"]["content"] != tuned["choices"][0]["message"]["content"]
    (error,) = run.errors
    assert error["custom_id"] == "line-12" and error["error"]["code"] == "model_not_found"
    assert error["error"]["message"] == expected["line-12"][1]["error"]["message"]
    assert run.batch["status"] == "completed"


def _pool(tiny_model: Path, servers: list[VLLMServer]) -> VLLMServerPool:
    return VLLMServerPool(
        model=str(tiny_model),
        served_model_name=MODEL_NAME,
        engine_urls=[server.url for server in servers],
        server_down_timeout_s=30,
    )


def test_in_pool_mode_adapter_lines_go_only_to_the_server_with_the_adapter(
    run_batch, tiny_model, servers
):
    with_adapter, without = servers[0], servers[1]
    start_all([with_adapter, without])
    lines = _lines([ADAPTER, MODEL_NAME] * 10 + ["not-an-adapter"])
    before = [s.metric("vllm:request_success_total") for s in (with_adapter, without)]
    run = run_batch(_content(lines), engine_override=_pool(tiny_model, [with_adapter, without]))
    after = [s.metric("vllm:request_success_total") for s in (with_adapter, without)]
    expected = {cid: _served(with_adapter, body)[1] for cid, body in lines[:-1]}
    _check_answers(run, lines, expected)
    # The server without the adapter answered no adapter line: it would have answered 404.
    assert after[0] - before[0] >= 10 and sum(after) - sum(before) == 20
    status, theirs = _served(with_adapter, lines[-1][1])
    error = run.by_id()["line-20"]
    assert status == error["response"]["status_code"] == 404
    assert error["response"]["body"] == theirs


def test_a_pool_of_two_models_answers_each_line_on_its_own_models_server(
    run_batch, tiny_model, servers
):
    tiny, other = servers[1], servers[2]
    start_all([tiny, other])
    lines = _lines([MODEL_NAME, OTHER_MODEL] * 8)
    run = run_batch(_content(lines), engine_override=_pool(tiny_model, [tiny, other]))
    expected = {
        cid: _served(tiny if body["model"] == MODEL_NAME else other, body)[1] for cid, body in lines
    }
    _check_answers(run, lines, expected)
    # The two models answer the same prompt differently, so a line on the wrong server shows.
    same_prompt = {**lines[0][1], "model": OTHER_MODEL}
    assert (
        _served(other, same_prompt)[1]["choices"][0]["message"]["content"]
        != expected["line-0"]["choices"][0]["message"]["content"]
    )
    assert run.batch["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
