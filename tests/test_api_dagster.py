"""The HTTP API end to end: the unchanged `openai` SDK against `batch-infer serve` and a real
`dagster dev` (webserver + daemon, the shipped instance), on a local folder and on SeaweedFS."""

import asyncio
import io
import json
import os
import subprocess
import time
from pathlib import Path

import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import MODEL_NAME, ROOT, chat_body, chat_requests, request_ids, request_line
from tests.dagster_dev import DagsterDev
from tests.seaweedfs import free_port, stop_process_group
from tests.webhook_receiver import Receiver, new_secret

pytestmark = pytest.mark.slow
CHAT = "/v1/chat/completions"
KEYS = "team-a:key-a,team-b:key-b"


class ApiServer:
    """``batch-infer serve`` in a process of its own, restartable on the same port."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log, self.port = env, log, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(ROOT / ".venv" / "bin" / "batch-infer"), "serve", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **self.env},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        sdk = openai.OpenAI(base_url=self.base_url, api_key="key-a", max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                sdk.files.list()
                return
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, self.log.read_text()[-3000:]
                time.sleep(0.3)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, 9)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, timeout_s=15)


def _sdk(server: ApiServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.base_url, api_key=key, max_retries=2, _strict_response_validation=True
    )


def _wait(sdk: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 600) -> Batch:
    deadline = time.monotonic() + timeout_s
    while (batch := sdk.batches.retrieve(batch_id)).status not in statuses:
        assert batch.status not in {"failed", "expired"} - statuses, batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status}"
        time.sleep(1)
    return batch


def _content(requests: int, prefix: str, max_tokens: int = 16) -> bytes:
    lines = [
        request_line(f"{prefix}-{i}", chat_body(f"{prefix} river {i}", max_tokens=max_tokens))
        for i in range(requests)
    ]
    return ("\n".join([*lines, "{not json"]) + "\n").encode()


def _environment(storage: BatchStorage, extra: dict[str, str]) -> dict[str, str]:
    return {
        "BATCH_STORAGE": storage.root,
        "BATCH_PROJECTS": "team-a,team-b",
        "BATCH_MODEL": str(ROOT / "models" / "tiny-chat"),
        "BATCH_SERVED_MODEL_NAME": MODEL_NAME,
        "BATCH_API_KEYS": KEYS,
        **extra,
    }


def _check_results(sdk: openai.OpenAI, batch: Batch, requests: int) -> dict[str, str]:
    """Every line of the two files valid; the greedy texts by custom_id."""
    assert batch.request_counts is not None and batch.output_file_id and batch.error_file_id
    assert (batch.request_counts.total, batch.request_counts.completed) == (requests + 1, requests)
    output = [
        json.loads(line) for line in sdk.files.content(batch.output_file_id).text.splitlines()
    ]
    errors = [json.loads(line) for line in sdk.files.content(batch.error_file_id).text.splitlines()]
    assert len(output) == requests
    assert [(e["error"]["code"], e["error"]["line"]) for e in errors] == [
        ("invalid_json_line", requests + 1)
    ]
    texts = {}
    for line in output:
        body = ChatCompletion.model_validate(line["response"]["body"], strict=True)
        texts[line["custom_id"]] = body.choices[0].message.content or ""
    listed = {f.id: f for f in sdk.files.list(purpose="batch_output")}
    assert {batch.output_file_id, batch.error_file_id} <= set(listed)
    return texts


def _wait_for_events(receiver: Receiver, count: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while len(receiver.delivered) < count:
        assert time.monotonic() < deadline, f"{len(receiver.delivered)} of {count} events"
        time.sleep(0.5)


def _check_events(receiver: Receiver, secret: str, expected: dict[str, str]) -> None:
    """One delivered event per batch (``{batch_id: type}``), each attempt of it with one id."""
    sdk = openai.OpenAI(api_key="unused", webhook_secret=secret)
    events = [sdk.webhooks.unwrap(r.body, r.headers) for r in receiver.delivered]
    assert {e.data.id: e.type for e in events} == expected
    assert len(events) == len(expected)
    for attempt in receiver.received:
        assert attempt.headers["webhook-id"] in {e.id for e in events}


def test_the_sdk_runs_batches_through_serve_and_dagster_dev(tmp_path, run_batch):
    storage = BatchStorage(root=str(tmp_path / "api-storage"), projects=["team-a", "team-b"])
    hook_a, hook_b = Receiver(script=[500, 500]), Receiver()  # team-a's first answers fail
    secret_a, secret_b = new_secret(), new_secret()
    hooks = {
        "BATCH_WEBHOOKS": f"team-a={hook_a.url},team-b={hook_b.url}",
        "BATCH_WEBHOOK_SECRETS": f"team-a={secret_a},team-b={secret_b}",
    }
    env = _environment(storage, hooks)
    api = ApiServer(env, tmp_path / "serve.log")
    api.start()
    dev: DagsterDev | None = None
    try:
        a, b = _sdk(api, "key-a"), _sdk(api, "key-b")
        content = _content(30, "api")
        file = a.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
        first = a.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        # Dagster is not running yet: the API answers, and the batch waits in validating.
        assert a.batches.retrieve(first.id).status == "validating"

        async def team_b_batch() -> str:
            sdk = openai.AsyncOpenAI(
                base_url=api.base_url, api_key="key-b", _strict_response_validation=True
            )
            upload = await sdk.files.create(
                file=("b.jsonl", io.BytesIO(_content(5, "team-b"))), purpose="batch"
            )
            made = await sdk.batches.create(
                input_file_id=upload.id, endpoint=CHAT, completion_window="24h"
            )
            await sdk.close()
            return made.id

        b_batch = asyncio.run(team_b_batch())
        with pytest.raises(openai.NotFoundError):
            b.batches.retrieve(first.id)  # another project's batch

        dev = DagsterDev(tmp_path / "home", env)
        dev.wait_ready()
        # The API server killed and restarted mid-way changes nothing for the batches.
        api.kill()
        api.start()
        done = _wait(a, first.id, {"completed"})
        assert a.files.wait_for_processing(file.id).status == "processed"
        texts = _check_results(a, done, 30)
        in_process = run_batch(content)
        for line in in_process.output:
            assert (
                texts[line["custom_id"]]
                == line["response"]["body"]["choices"][0]["message"]["content"]
            )
        assert _check_results(b, _wait(b, b_batch, {"completed"}), 5)

        # Cancel a long batch once it has answers: the finished lines are kept.
        long_file = a.files.create(
            file=("long.jsonl", io.BytesIO(_content(3000, "long", max_tokens=128))), purpose="batch"
        )
        long = a.batches.create(input_file_id=long_file.id, endpoint=CHAT, completion_window="24h")
        # Its counts move while it runs (live counts), rising at least twice.
        seen: list[int] = []
        deadline = time.monotonic() + 600
        while len(seen) < 3 or seen[-1] < 100:
            assert time.monotonic() < deadline, f"the long batch's counts: {seen}"
            running = a.batches.retrieve(long.id)
            if running.status == "in_progress" and running.request_counts:
                assert running.request_counts.total == 3001
                if running.request_counts.completed > (seen[-1] if seen else -1):
                    seen.append(running.request_counts.completed)
            time.sleep(0.5)
        assert a.batches.cancel(long.id).status == "cancelling"
        cancelled = _wait(a, long.id, {"cancelled"}, timeout_s=300)
        assert cancelled.request_counts is not None
        kept = a.files.content(cancelled.output_file_id).text.splitlines()
        rest = a.files.content(cancelled.error_file_id).text.splitlines()
        assert 100 <= len(kept) < 3000
        assert len(kept) + len(rest) == 3001
        codes = {json.loads(line)["error"]["code"] for line in rest}
        assert codes == {"batch_cancelled", "invalid_json_line"}
        with pytest.raises(openai.ConflictError):
            a.batches.cancel(first.id)  # finished: cannot be cancelled
        assert a.batches.cancel(long.id).status == "cancelled"  # idempotent
        assert cancelled.request_counts.completed == len(kept) >= seen[-1]
        # One signed event per ended batch, to its own project's endpoint only; team-a's
        # first two attempts failed (500) and were retried with the same webhook-id.
        _wait_for_events(hook_a, 2)
        _wait_for_events(hook_b, 1)
        _check_events(hook_a, secret_a, {first.id: "batch.completed", long.id: "batch.cancelled"})
        _check_events(hook_b, secret_b, {b_batch: "batch.completed"})
        assert [r.status for r in hook_a.received].count(500) == 2
        while not all(run.is_finished for run in dev.runs(None)):
            time.sleep(1)
        served = (tmp_path / "serve.log").read_text()
        assert "POST /v1/batches" in served  # the log is there, and holds no key or prompt
        assert "key-a" not in served and "key-b" not in served and "api river" not in served
    finally:
        api.stop()
        if dev is not None:
            dev.stop()
        hook_a.close()
        hook_b.close()


def test_the_sdk_runs_a_batch_on_seaweedfs(tmp_path, s3_server):
    storage = BatchStorage(
        root="s3://batches/api-e2e", endpoint_url=s3_server.endpoint, projects=["team-a", "team-b"]
    )
    env = _environment(storage, {"AWS_ENDPOINT_URL": s3_server.endpoint})
    api = ApiServer(env, tmp_path / "serve.log")
    api.start()
    dev = DagsterDev(tmp_path / "home", env)
    try:
        dev.wait_ready()
        a = _sdk(api, "key-a")
        content = chat_requests("s3", 12).encode() + b"{not json\n"
        file = a.files.create(file=("s3.jsonl", io.BytesIO(content)), purpose="batch")
        assert a.files.content(file.id).read() == content
        batch = a.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
        done = _wait(a, batch.id, {"completed"})
        output = a.files.content(done.output_file_id).text.splitlines()
        assert sorted(json.loads(line)["custom_id"] for line in output) == request_ids("s3", 12)
        for line in output:
            ChatCompletion.model_validate(json.loads(line)["response"]["body"], strict=True)
        # The objects lie in the project's prefix of the bucket.
        assert storage.for_project("team-a").exists(BatchPaths(batch.id).batch_json)
        # vLLM's rerank endpoint (a pooling model) through the same API.
        query = {"model": MODEL_NAME, "documents": ["a b", "c"]}
        rerank = "".join(
            request_line(f"rr-{i}", {**query, "query": f"q {i}"}, url="/v1/rerank") + "\n"
            for i in range(3)
        )
        file = a.files.create(file=("rr.jsonl", io.BytesIO(rerank.encode())), purpose="batch")
        ranked = a.batches.create(
            input_file_id=file.id,
            endpoint="/v1/rerank",  # type: ignore[arg-type]  # vLLM's, not in the SDK's list
            completion_window="24h",
        )
        done = _wait(a, ranked.id, {"completed"})
        assert done.endpoint == "/v1/rerank" and done.request_counts.completed == 3
        for line in a.files.content(done.output_file_id).text.splitlines():
            results = json.loads(line)["response"]["body"]["results"]
            assert sorted(r["index"] for r in results) == [0, 1]
            scores = [r["relevance_score"] for r in results]
            assert scores == sorted(scores, reverse=True)
        with pytest.raises(openai.NotFoundError):
            _sdk(api, "key-b").files.content(done.output_file_id)
        while not all(run.is_finished for run in dev.runs(None)):
            time.sleep(1)
    finally:
        api.stop()
        dev.stop()
