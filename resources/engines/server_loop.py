"""Pool mode's loop: send a batch's requests to running vLLM servers and journal each answer.

The counterpart of :mod:`resources.engines.inference_loop` for an engine that is not in the run.
Each server keeps a window of requests in flight, so its own scheduler batches them
continuously, together with whatever else it serves. Answers are journaled as they arrive;
a request whose server goes down goes to another one and is journaled once. The bodies are
the servers' own (``vllm serve``'s). A line goes only to a server that serves its
``body.model`` (a base model or a LoRA adapter; the configured model's aliases are sent as the
configured served name); a name no server serves is answered as vllm serve answers it (404).
"""

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from resources.engines.base import LoopStats, RunControl, ServedNames, dumps
from resources.engines.servers import Answer, Server, ServerDown, ServerPool
from resources.journal import JournalRecord, JournalWriter

logger = logging.getLogger(__name__)
# A request answered 5xx (or 429) this many times is journaled with that answer.
MAX_ATTEMPTS = 3
# A request whose connection was dropped this many times (by live servers: a request that
# kills every server makes the run fail instead) becomes a 502 error line.
MAX_DROPS = 5
_TICK_S = 0.25  # how long the loop waits for an answer before it looks at the clock again


class ServersUnavailable(Exception):
    """No server answered for longer than the configured wait."""


@dataclass
class _Request:
    line: int
    body: dict[str, Any]
    attempts: int = 0  # answers of 5xx or 429 so far
    drops: int = 0  # connections dropped without an answer so far
    failed_on: Server | None = None


@dataclass
class ServerLoop:
    pool: ServerPool
    journal: JournalWriter
    endpoint: str  # "/v1/chat/completions": the same path on every server
    model: str  # the configured served name; a body naming one of ``aliases`` is sent as it
    down_timeout_s: float
    aliases: frozenset[str] = frozenset()
    priority: int | None = None  # vLLM's request priority (lower goes first), when enabled
    control: RunControl = field(default_factory=RunControl)

    def run(self, pending: Iterable[tuple[int, str]]) -> LoopStats:
        """Answer every ``(line, body_json)`` of ``pending`` and journal the answers.

        As in-process: at the deadline no new request is sent and those in flight finish;
        a cancel aborts those in flight. Raises :class:`ServersUnavailable` when no server
        answers for ``down_timeout_s`` (what is journaled stays, so a retry resumes).
        """
        return asyncio.run(self._run(iter(pending)))

    async def _run(self, pending: Iterator[tuple[int, str]]) -> LoopStats:
        stats = LoopStats()
        # Retries, and lines whose model has no server with room yet, in the order they came.
        waiting: deque[_Request] = deque()
        sent: dict[asyncio.Task, _Request] = {}
        exhausted = False
        all_down_since: float | None = None
        path = self.endpoint.removeprefix("/v1")
        control = self.control
        control.start()
        async with self.pool:
            await self.pool.check()
            # How many lines may wait for their model's servers while later lines go ahead.
            lookahead = self.pool.window * len(self.pool.servers)
            try:
                while True:
                    now = time.monotonic()
                    if not exhausted and control.deadline_passed():
                        exhausted = stats.stopped_at_deadline = True
                        waiting.clear()  # not journaled: they wait for the next run
                    if control.cancel_requested():
                        stats.cancelled = True
                        break
                    self.pool.raise_probe_errors()
                    self.pool.revive()
                    # Fill every server's window: what waits first, then new lines in order.
                    for _ in range(len(waiting)):
                        request = waiting.popleft()
                        if not self._send(request, path, sent, stats):
                            waiting.append(request)
                    while not exhausted and len(waiting) < lookahead:
                        new = self._next(pending)
                        if new is None:
                            exhausted = True
                        elif not self._send(new, path, sent, stats):
                            waiting.append(new)
                    if not sent:
                        if exhausted and not waiting:
                            break
                        # Work is waiting and no server of its model can take it: all are down.
                        all_down_since = all_down_since or now
                        if now - all_down_since > self.down_timeout_s:
                            raise ServersUnavailable(self._unavailable())
                        await asyncio.sleep(_TICK_S)
                        continue
                    all_down_since = None
                    done, _ = await asyncio.wait(
                        sent, timeout=_TICK_S, return_when=asyncio.FIRST_COMPLETED
                    )
                    for task in done:
                        request = sent.pop(task)
                        if self._settle(request, task, stats) and not stats.stopped_at_deadline:
                            waiting.append(request)
                    self.journal.flush()
                    control.tick(stats)
            finally:
                for task in sent:  # cancelled or failed: the servers abort what they had
                    task.cancel()
                await asyncio.gather(*sent, return_exceptions=True)
                self.journal.flush()
        return control.finish(stats)

    def _next(self, pending: Iterator[tuple[int, str]]) -> _Request | None:
        item = next(pending, None)
        if item is None:
            return None
        line, body_json = item
        body = json.loads(body_json)
        if body.get("model") in self.aliases:
            body["model"] = self.model
        if self.priority is not None:
            body["priority"] = self.priority
        return _Request(line, body)

    def _send(
        self, request: _Request, path: str, sent: dict[asyncio.Task, _Request], stats: LoopStats
    ) -> bool:
        """Send ``request`` to a server of its model, or journal why none ever will; ``False``
        when it must wait (its servers are full, down or not yet probed)."""
        model = str(request.body.get("model"))
        if self.pool.serves(model) is False:
            self._journal(request.line, self._not_served(model), stats)
            return True
        server = self.pool.pick(model, avoid=request.failed_on)
        if server is None:
            return False
        sent[self.pool.submit(server, path, request.body)] = request
        request.failed_on = server
        return True

    def _not_served(self, model: str) -> Answer:
        """vllm serve's answer to a model it does not serve, naming what the pool serves."""
        message = ServedNames(tuple(self.pool.base_names())).not_found(model)
        error = {"message": message, "type": "NotFoundError", "param": "model", "code": 404}
        return Answer(404, {"error": error})

    def _settle(self, request: _Request, task: asyncio.Task, stats: LoopStats) -> bool:
        """Journal a finished request's answer; ``True`` when it must be sent again."""
        error = task.exception()
        if isinstance(error, ServerDown):
            request.drops += 1
            if request.drops < MAX_DROPS:
                return True  # most likely not the request's fault: another server takes it
            logger.warning(
                "line %d: dropped by %d servers; journaled as an error", request.line, request.drops
            )
            self._journal(request.line, _dropped_answer(error), stats)
            return False
        if error is not None:
            raise error
        answer: Answer = task.result()
        retryable = answer.status >= 500 or answer.status == 429
        if retryable:
            request.attempts += 1
            if request.attempts < MAX_ATTEMPTS:
                return True
            logger.warning(
                "line %d: answered %d %d times; journaled as an error",
                request.line,
                answer.status,
                request.attempts,
            )
        self._journal(request.line, answer, stats)
        return False

    def _journal(self, line: int, answer: Answer, stats: LoopStats) -> None:
        body_json = dumps(answer.body)
        record = (
            JournalRecord.answer(line, answer.body, body_json)
            if answer.status == 200
            else JournalRecord.error(line, answer.status, body_json)
        )
        self.journal.write(record)
        stats.count(record)

    def _unavailable(self) -> str:
        servers = ", ".join(str(s) for s in self.pool.servers)
        return (
            f"no vLLM server answered for {self.down_timeout_s:.0f} s ({servers}); the answers "
            "finished so far are journaled and a rerun resumes"
        )


def _dropped_answer(error: ServerDown) -> Answer:
    message = (
        f"the vLLM servers closed the connection {MAX_DROPS} times without answering ({error})"
    )
    return Answer(
        502, {"error": {"message": message, "type": "server_error", "param": None, "code": "502"}}
    )
