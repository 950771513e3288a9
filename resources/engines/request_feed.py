"""The requests that feed the engine loop, prepared (parsed, rendered, tokenized) in order.

Two ways to prepare them, chosen by where the engine runs:

- :class:`ThreadedFeed`: the engine runs in a process of its own (vLLM's default, on GPU);
  the loop's thread mostly waits for that process, so a thread prepares requests ahead.
- :class:`InlineFeed`: the engine runs in this process (on CPU); its forward pass and its
  scheduler use the cores themselves, so requests are prepared between engine steps rather
  than by a thread that competes with them (measured: ~6% more requests/s on 2 cores).
"""

import json
import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from resources.engines.openai_to_vllm import PreparedRequest, RequestBuilder, RequestRejected

DONE = object()  # the last item of a feed
logger = logging.getLogger(__name__)
Item = tuple[int, PreparedRequest | RequestRejected]


def prepare(builder: RequestBuilder, endpoint: str, line: int, body_json: str) -> Item:
    """One line's request, or why the engine would refuse it (never an exception)."""
    try:
        return line, builder.prepare(endpoint, json.loads(body_json))
    except RequestRejected as rejected:
        return line, rejected
    except Exception as exc:  # one hostile request must not end the batch
        logger.warning("line %d could not be prepared (%s)", line, type(exc).__name__)
        return line, RequestRejected(
            f"the request could not be prepared: {type(exc).__name__}: {exc}"
        )


class InlineFeed:
    """Prepares requests when the loop takes them."""

    def __init__(self, pending: Iterable[tuple[int, str]], builder: RequestBuilder, endpoint: str):
        self._pending = iter(pending)
        self._builder, self._endpoint = builder, endpoint
        self._done = False
        self.error: BaseException | None = None

    def take(self, limit: int, block: bool) -> Iterator[Any]:
        """Up to ``limit`` items, then :data:`DONE` once the requests run out."""
        for _ in range(limit):
            if self._done:
                return
            line_body = next(self._pending, None)
            if line_body is None:
                self._done = True
                yield DONE
                return
            yield prepare(self._builder, self._endpoint, *line_body)

    def close(self) -> None:
        self._done = True


class ThreadedFeed(threading.Thread):
    """Prepares requests in a thread, up to ``depth`` ahead of the loop."""

    def __init__(
        self, pending: Iterable[tuple[int, str]], builder: RequestBuilder, endpoint: str, depth: int
    ):
        super().__init__(name="batch-request-feed", daemon=True)
        self._pending, self._builder, self._endpoint = pending, builder, endpoint
        self._out: queue.Queue = queue.Queue(maxsize=depth)
        self._stopping = threading.Event()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for line, body_json in self._pending:
                if self._stopping.is_set():
                    return
                self._put(prepare(self._builder, self._endpoint, line, body_json))
        except BaseException as exc:  # surfaced by the loop
            self.error = exc
        finally:
            self._put(DONE)

    def _put(self, item: Any) -> None:
        while not self._stopping.is_set():
            try:
                self._out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def take(self, limit: int, block: bool) -> Iterator[Any]:
        """Up to ``limit`` ready items; waits for the first one only when ``block``."""
        for n in range(limit):
            try:
                yield self._out.get(block=block and n == 0, timeout=None)
            except queue.Empty:
                return

    def close(self) -> None:
        self._stopping.set()
        self.join(timeout=5)
