"""Feed a batch's requests through one vLLM engine continuously and journal each as it finishes.

The engine's scheduler always has a window of queued requests, so it batches continuously
(no draining between fixed blocks). Requests are prepared by a feed
(:mod:`resources.engines.request_feed`): ahead in a thread when the engine runs in its own
process, between steps when it runs in this one. Finished requests become OpenAI response
bodies and are journaled after every engine step.
"""

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from resources.engines.base import LoopStats, RunControl, dumps, response_id
from resources.engines.openai_to_vllm import PreparedRequest, RequestBuilder, RequestRejected
from resources.engines.request_feed import DONE, InlineFeed, ThreadedFeed
from resources.engines.vllm_serving import ServingRejected
from resources.engines.vllm_to_openai import ResponseBuilder
from resources.journal import JournalRecord, JournalWriter

logger = logging.getLogger(__name__)


@dataclass
class _InFlight:
    prepared: PreparedRequest
    request_ids: list[str]
    outputs: list[Any] = field(default_factory=list)


def engine_in_this_process(llm: Any) -> bool:
    """Whether vLLM runs the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    return type(llm.llm_engine.engine_core).__name__ == "InprocClient"


def _watch_engine_process(engine: Any, stop: threading.Event) -> None:
    """Unblock ``engine.step()`` if the engine process dies.

    With the engine in a process of its own, vLLM 0.32 notices the death and shuts the client
    down, but the thread that feeds ``step()`` can exit without passing the error on, and
    ``step()`` then waits forever. This puts vLLM's own EngineDeadError where ``step()``
    waits, so the run fails cleanly and its retry resumes. An in-process engine has no such
    state to watch (its death is the run's own).
    """
    core = getattr(engine, "engine_core", None)
    resources = getattr(core, "resources", None)
    outputs = getattr(core, "outputs_queue", None)
    if resources is None or outputs is None:
        return
    while not stop.wait(1.0):
        if getattr(resources, "engine_dead", False):
            from vllm.v1.engine.exceptions import EngineDeadError

            outputs.put_nowait(EngineDeadError())
            return


@dataclass
class InferenceLoop:
    llm: Any
    requests: RequestBuilder
    responses: ResponseBuilder
    journal: JournalWriter
    batch_id: str
    endpoint: str
    window: int
    control: RunControl = field(default_factory=RunControl)
    # Never run base-model and adapter requests in one engine step. vLLM 0.32's CPU LoRA ops
    # index the adapter slots with -1 for "no adapter", which selects the last slot: a
    # base-model request batched with adapter requests gets an adapter's answer once that slot
    # is loaded. With this set, a request of the other kind waits until the engine drains
    # (lines come grouped by model, so that is once per group).
    separate_adapters: bool = False
    _held: Any = field(default=None, init=False)  # the line waiting for the other kind to finish

    def run(self, pending: Iterable[tuple[int, str]]) -> LoopStats:
        """Answer every ``(line, body_json)`` of ``pending`` and journal the answers.

        At the control's deadline the loop takes no new request; the ones already in the
        engine finish and are journaled, and the rest are left for a later run. On a cancel
        request, the requests in the engine are aborted and the loop returns.
        """
        engine = self.llm.llm_engine
        stats = LoopStats()
        in_flight: dict[int, _InFlight] = {}
        queued = 0
        feed = (
            InlineFeed(pending, self.requests, self.endpoint)
            if engine_in_this_process(self.llm)
            else ThreadedFeed(pending, self.requests, self.endpoint, self.window)
        )
        watching = threading.Event()
        threading.Thread(target=_watch_engine_process, args=(engine, watching), daemon=True).start()
        exhausted = False
        failure: BaseException | None = None
        control = self.control
        control.start()
        try:
            while True:
                if not exhausted and control.deadline_passed():
                    exhausted = stats.stopped_at_deadline = True
                if control.cancel_requested():
                    stats.cancelled = True
                    break
                if not exhausted and queued < self.window:
                    idle = not engine.has_unfinished_requests()
                    if self._held is not None and not in_flight:  # the other kind's turn
                        (line, prepared), self._held = self._held, None
                        queued += self._submit(engine, line, prepared, in_flight, stats)
                        idle = False
                    if self._held is None:
                        for item in feed.take(self.window - queued, block=idle):
                            if item is DONE:
                                exhausted = True
                                break
                            line, prepared = item
                            if self._must_wait(prepared, in_flight):
                                self._held = item
                                break
                            queued += self._submit(engine, line, prepared, in_flight, stats)
                    if feed.error is not None:
                        raise feed.error
                if not engine.has_unfinished_requests():
                    if exhausted:
                        break
                    continue
                for output in engine.step():
                    if not output.finished:
                        continue
                    queued -= 1
                    line = int(output.request_id.split(".", 1)[0])
                    state = in_flight[line]
                    state.outputs.append(output)
                    if len(state.outputs) == len(state.request_ids):
                        del in_flight[line]
                        self._answer(line, state, stats)
                self.journal.flush()
                control.tick(stats)
        except BaseException as error:
            failure = error
            raise
        finally:
            watching.set()
            # Stopped mid-way: leave the engine clean for a kept-alive reuse (a dead engine
            # cannot be told anything).
            if in_flight and type(failure).__name__ != "EngineDeadError":
                engine.abort_request([r for s in in_flight.values() for r in s.request_ids])
            self.journal.flush()
            feed.close()
        return control.finish(stats)

    def _must_wait(
        self, prepared: PreparedRequest | RequestRejected, in_flight: dict[int, _InFlight]
    ) -> bool:
        """Whether ``prepared`` must wait for the other kind's requests in flight (see
        :attr:`separate_adapters`); the kind running is that of any line in flight."""
        if not self.separate_adapters or not in_flight:
            return False
        if not isinstance(prepared, PreparedRequest):
            return False
        running = next(iter(in_flight.values())).prepared.lora is not None
        return (prepared.lora is not None) != running

    def _journal(self, record: JournalRecord, stats: LoopStats) -> None:
        self.journal.write(record)
        stats.count(record)

    def _reject(self, line: int, error: RequestRejected, stats: LoopStats) -> None:
        self._journal(JournalRecord.error(line, 400, dumps(error.error_body())), stats)

    def _submit(
        self,
        engine: Any,
        line: int,
        prepared: PreparedRequest | RequestRejected,
        in_flight: dict[int, _InFlight],
        stats: LoopStats,
    ) -> int:
        """Add one line's engine requests; returns how many were queued."""
        from vllm.exceptions import VLLMValidationError

        if isinstance(prepared, RequestRejected):
            self._reject(line, prepared, stats)
            return 0
        request_ids = [f"{line}.{k}" for k in range(len(prepared.inputs))]
        added: list[str] = []
        try:
            for request_id, engine_input, params in zip(
                request_ids, prepared.inputs, prepared.params, strict=True
            ):
                engine.add_request(request_id, engine_input, params, lora_request=prepared.lora)
                added.append(request_id)
        except (VLLMValidationError, ValueError, TypeError) as exc:
            if added:
                engine.abort_request(added)
            self._reject(line, RequestRejected.from_engine_error(exc), stats)
            return 0
        in_flight[line] = _InFlight(prepared, request_ids)
        return len(request_ids)

    def _answer(self, line: int, state: _InFlight, stats: LoopStats) -> None:
        order = {rid: k for k, rid in enumerate(state.request_ids)}
        outputs = sorted(state.outputs, key=lambda o: order[o.request_id])
        try:
            body = self.responses.build(
                state.prepared, outputs, response_id(self.batch_id, line), int(time.time())
            )
        except ServingRejected as rejected:  # vLLM's serving layer refused the output
            self._journal(JournalRecord.error(line, rejected.status, dumps(rejected.body)), stats)
            return
        self._journal(JournalRecord.answer(line, body, dumps(body)), stats)
