"""The pool's control logic in milliseconds: dispatch, windows, retries, failover, back-off,
deadline and cancel, against small HTTP servers written here (aiohttp's web server) that
answer, fail, stall or drop exactly as told and count what they got.

What the real vLLM servers do with these requests is tests/test_engine_pool.py's subject.
"""

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from resources.engines.base import RunControl
from resources.engines.server_loop import MAX_ATTEMPTS, ServerLoop, ServersUnavailable
from resources.engines.servers import PoolMisconfigured, Server, ServerPool
from resources.journal import JournalWriter, read_journal
from resources.storage import BatchStorage

MODEL = "tiny-chat"
JOURNAL = "work/batch_x/journal"


@dataclass
class FakeServer:
    """A vLLM-shaped OpenAI server: ``mode`` says how it answers chat requests."""

    mode: str = "ok"  # ok | 503 | stall | drop | 400
    model: str = MODEL
    adapters: tuple[str, ...] = ()  # further names its /v1/models lists (LoRA adapters)
    models_status: int = 200
    delay_s: float = 0.0
    lines: list[int] = field(default_factory=list)  # the line of every request received
    in_flight: int = 0
    most_in_flight: int = 0
    url: str = ""
    received_at: list[float] = field(default_factory=list)  # monotonic, one a request
    answered_at: list[float] = field(default_factory=list)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.lines.append(body["messages"][0]["content"])
        self.received_at.append(time.monotonic())
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.mode == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response(status=500)
            if self.mode == "stall":
                await asyncio.sleep(3600)
            await asyncio.sleep(self.delay_s)
            if self.mode == "503":
                return web.json_response({"error": {"message": "busy"}}, status=503)
            if self.mode == "400":
                return web.json_response({"error": {"message": "bad", "code": 400}}, status=400)
            answer = {"id": "chatcmpl-1", "model": body["model"], "line": body["messages"]}
            if "priority" in body:
                answer["priority"] = body["priority"]
            return web.json_response(answer)
        finally:
            self.in_flight -= 1
            self.answered_at.append(time.monotonic())

    async def models(self, _: web.Request) -> web.Response:
        adapters = [{"id": name, "parent": self.model} for name in self.adapters]
        data = [{"id": self.model, "parent": None}, *adapters]
        return web.json_response({"data": data}, status=self.models_status)

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="")


@contextmanager
def servers(*fakes: FakeServer) -> Iterator[list[FakeServer]]:
    """Serve ``fakes`` on loopback from one event loop in a thread of their own."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []

    async def start() -> None:
        for fake in fakes:
            app = web.Application()
            app.router.add_get("/health", fake.health)
            app.router.add_get("/v1/models", fake.models)
            app.router.add_post("/v1/chat/completions", fake.chat)
            runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            fake.url = f"http://127.0.0.1:{port}/v1"
            runners.append(runner)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield list(fakes)
    finally:

        async def stop() -> None:
            for runner in runners:
                await runner.cleanup()
            stalled = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in stalled:
                task.cancel()
            await asyncio.gather(*stalled, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _pending(count: int) -> list[tuple[int, str]]:
    """``count`` chat lines whose content is their line number (the fakes count them)."""
    return [
        (line, json.dumps({"model": "x", "messages": [{"role": "user", "content": line}]}))
        for line in range(1, count + 1)
    ]


def _run(
    tmp_path: Path,
    urls: list[str],
    count: int | list[tuple[int, str]],
    window: int = 4,
    down_timeout_s: float = 5.0,
    timeout_s: float = 30.0,
    control: RunControl | None = None,
    priority: int | None = None,
):
    storage = BatchStorage(root=str(tmp_path))
    pool = ServerPool(urls, MODEL, window=window, timeout_s=timeout_s)
    with JournalWriter(storage, JOURNAL, "attempt") as journal:
        loop = ServerLoop(
            pool=pool,
            journal=journal,
            endpoint="/v1/chat/completions",
            model=MODEL,
            aliases=frozenset({MODEL, "x"}),  # the lines name "x"
            down_timeout_s=down_timeout_s,
            priority=priority,
            control=control or RunControl(),
        )
        stats = loop.run(_pending(count) if isinstance(count, int) else count)
    return stats, read_journal(storage, JOURNAL)


def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_requests_spread_over_the_servers_within_each_window(tmp_path):
    with servers(FakeServer(delay_s=0.01), FakeServer(delay_s=0.01)) as (a, b):
        stats, journal = _run(tmp_path, [a.url, b.url], 60, window=3)
    assert stats.requests == 60 and stats.rejected == 0
    assert sorted(journal) == list(range(1, 61))
    assert a.lines and b.lines and sorted(a.lines + b.lines) == list(range(1, 61))
    assert a.most_in_flight <= 3 and b.most_in_flight <= 3
    body = json.loads(journal[1].body)
    assert body["model"] == MODEL  # an alias is sent as the served name


def test_a_5xx_is_retried_on_the_other_server_never_on_the_same(tmp_path):
    with servers(FakeServer(mode="503"), FakeServer()) as (failing, good):
        stats, journal = _run(tmp_path, [failing.url, good.url], 30, window=2)
    assert stats.rejected == 0 and sorted(journal) == list(range(1, 31))
    assert all(record.status_code == 200 for record in journal.values())
    assert len(set(failing.lines)) == len(failing.lines)  # no line went back to it
    assert sorted(good.lines) == list(range(1, 31))


def test_a_line_answered_5xx_every_time_becomes_its_error_line(tmp_path):
    with servers(FakeServer(mode="503")) as (failing,):
        stats, journal = _run(tmp_path, [failing.url], 5)
    assert stats.requests == 5 and stats.rejected == 5
    assert {record.status_code for record in journal.values()} == {503}
    assert sorted(failing.lines) == sorted(list(range(1, 6)) * MAX_ATTEMPTS)


def test_a_4xx_is_the_lines_answer_at_once(tmp_path):
    with servers(FakeServer(mode="400")) as (server,):
        stats, journal = _run(tmp_path, [server.url], 3)
    assert stats.rejected == 3 and sorted(server.lines) == [1, 2, 3]
    assert json.loads(journal[1].body)["error"]["message"] == "bad"


def test_a_server_that_drops_connections_loses_its_requests_to_the_other(tmp_path):
    with servers(FakeServer(mode="drop"), FakeServer()) as (dropping, good):
        stats, journal = _run(tmp_path, [dropping.url, good.url], 40)
    assert stats.rejected == 0 and sorted(journal) == list(range(1, 41))
    assert dropping.lines  # it was tried, and is out
    assert sorted(good.lines) == list(range(1, 41))


def test_no_server_answering_fails_the_run_after_the_wait(tmp_path):
    started = time.monotonic()
    with pytest.raises(ServersUnavailable, match="no vLLM server answered for 1 s"):
        _run(tmp_path, [_closed_port()], 5, down_timeout_s=1.0)
    assert time.monotonic() - started < 30


def test_a_server_serving_another_model_fails_the_run_before_any_request(tmp_path):
    with (
        servers(FakeServer(model="other-model")) as (other,),
        pytest.raises(PoolMisconfigured, match="serves \\['other-model'\\]"),
    ):
        _run(tmp_path, [other.url], 5)
    assert other.lines == []


def test_a_refused_key_fails_the_run(tmp_path):
    with (
        servers(FakeServer(models_status=401)) as (locked,),
        pytest.raises(PoolMisconfigured, match="refused the API key"),
    ):
        _run(tmp_path, [locked.url], 5)
    assert locked.lines == []


def test_the_deadline_sends_nothing_new_and_lets_what_is_in_flight_finish(tmp_path):
    control = RunControl(deadline=time.time() + 0.6)
    with servers(FakeServer(delay_s=0.25)) as (slow,):
        stats, journal = _run(tmp_path, [slow.url], 200, window=2, control=control)
    assert stats.stopped_at_deadline and not stats.cancelled
    assert 0 < stats.requests < 200
    assert sorted(journal) == sorted(slow.lines)  # whatever was sent was journaled, once


def test_a_cancel_aborts_what_is_in_flight_and_keeps_what_finished(tmp_path):
    asked = []
    control = RunControl(cancel_check=lambda: asked.append(1) or len(asked) > 1, cancel_poll_s=0.2)
    with servers(FakeServer(mode="stall")) as (stalled,):
        started = time.monotonic()
        stats, journal = _run(tmp_path, [stalled.url], 10, window=4, control=control)
    assert stats.cancelled and stats.requests == 0 and journal == {}
    assert len(stalled.lines) == 4  # one window sent, then the cancel
    assert time.monotonic() - started < 10


def test_a_request_that_times_out_goes_to_another_server(tmp_path):
    with servers(FakeServer(mode="stall"), FakeServer()) as (stalled, good):
        stats, journal = _run(tmp_path, [stalled.url, good.url], 6, window=2, timeout_s=0.5)
    assert sorted(journal) == list(range(1, 7)) and stats.rejected == 0
    assert stalled.lines and sorted(good.lines) == list(range(1, 7))


def test_priority_is_sent_only_when_the_servers_schedule_by_it(tmp_path):
    with servers(FakeServer()) as (server,):
        _, with_priority = _run(tmp_path / "a", [server.url], 2, priority=10)
        _, without = _run(tmp_path / "b", [server.url], 2)
    assert json.loads(with_priority[1].body)["priority"] == 10
    assert "priority" not in json.loads(without[1].body)


def test_a_down_server_is_probed_at_once_then_with_a_growing_backoff():
    pool = ServerPool(["http://127.0.0.1:1/v1"], MODEL, window=1, timeout_s=1)
    server: Server = pool.servers[0]
    for delay in [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]:
        before = time.monotonic()
        pool._mark_down(server)
        after = time.monotonic()
        assert before + delay <= server.retry_at <= after + delay  # whatever the machine's pace
    assert not server.up
    server.models = frozenset({MODEL})
    assert pool.pick(MODEL) is None  # nothing to send to while it is down


def test_each_line_goes_to_a_server_of_its_model_and_an_unknown_name_gets_vllms_404(tmp_path):
    names = ["x", "other", "adapter", "nope"] * 10  # "x": an alias of the configured model
    lines = [
        (n, json.dumps({"model": name, "messages": [{"role": "user", "content": n}]}))
        for n, name in enumerate(names, start=1)
    ]
    base, other = FakeServer(adapters=("adapter",)), FakeServer(model="other")
    with servers(base, other):
        stats, journal = _run(tmp_path, [base.url, other.url], lines, window=2)
    assert stats.requests == 40 and stats.rejected == 10
    by_name = {name: [n for n, m in enumerate(names, 1) if m == name] for name in set(names)}
    assert sorted(base.lines) == sorted(by_name["x"] + by_name["adapter"])
    assert sorted(other.lines) == by_name["other"]
    for n in by_name["nope"]:
        assert journal[n].status_code == 404
        error = json.loads(journal[n].body)["error"]
        assert error["message"] == (
            f"The model `nope` does not exist. Valid aliases: other, {MODEL}."
        )
        assert (error["type"], error["param"], error["code"]) == ("NotFoundError", "model", 404)
    assert json.loads(journal[by_name["x"][0]].body)["model"] == MODEL


def test_lines_of_a_busy_model_wait_while_the_other_models_lines_go_ahead(tmp_path):
    lines = [
        (n, json.dumps({"model": "x" if n <= 3 else "other", "messages": [{"content": n}]}))
        for n in range(1, 31)
    ]
    slow, fast = FakeServer(delay_s=2.0), FakeServer(model="other")  # a wide margin
    with servers(slow, fast):
        stats, journal = _run(tmp_path, [slow.url, fast.url], lines, window=2)
    assert stats.rejected == 0 and sorted(journal) == list(range(1, 31))
    assert sorted(slow.lines) == [1, 2, 3] and sorted(fast.lines) == list(range(4, 31))
    # Line 3 waited for room on its model's server; the 27 lines after it did not wait for it.
    assert max(fast.received_at) < min(slow.answered_at)
