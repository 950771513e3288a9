"""The servers of pool mode: long-running vLLM OpenAI servers, checked, then picked least busy.

One aiohttp session on the run's event loop sends every request (connections are reused; no
thread per request). A server that refuses a connection, times out or drops one is *down*:
it gets no request until a fresh probe of ``/health`` and ``/v1/models`` passes, tried with a
backoff that grows while it keeps failing. Each probe notes the names a server serves (its
base models and LoRA adapters): a request goes only to a server that serves its
``body.model``, so one pool may serve several models and adapters. Servers that all answer
but none with the configured model, or one that refuses the API key, are a configuration
fault: :class:`PoolMisconfigured`.
"""

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

logger = logging.getLogger(__name__)
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 15.0
# Consecutive 5xx answers that take a server out of the rotation until a probe passes.
_FAULTS_BEFORE_DOWN = 5
_PROBE_TIMEOUT_S = 10.0


class PoolMisconfigured(Exception):
    """A server answers, but not as the batch needs (another model, a refused key)."""


class ServerDown(Exception):
    """The server refused the connection, timed out or dropped it."""


def base_url(url: str) -> str:
    """The OpenAI base URL of a server: ``http://host:8000`` and ``http://host:8000/v1/`` alike
    become ``http://host:8000/v1``."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else f"{url}/v1"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


@dataclass(eq=False)
class Server:
    url: str  # the base URL, ending in /v1
    in_flight: int = 0
    up: bool = True
    failures: int = 0  # consecutive: connection faults, 5xx answers and failed probes
    retry_at: float = 0.0  # monotonic time of the next probe while down
    probing: bool = False
    models: frozenset[str] | None = None  # what its /v1/models lists; None until probed
    bases: frozenset[str] = frozenset()  # of those, the base models (not adapters)

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def __str__(self) -> str:
        return self.url


@dataclass
class ServerPool:
    """Least-outstanding-requests balancing over ``urls``, at most ``window`` in flight each."""

    urls: Iterable[str]
    model: str
    window: int
    timeout_s: float
    api_key: str | None = None
    servers: list[Server] = field(init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    _probes: set[asyncio.Task] = field(default_factory=set, init=False)
    _fault: PoolMisconfigured | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.servers = [Server(base_url(url)) for url in dict.fromkeys(self.urls)]
        if not self.servers:
            raise PoolMisconfigured("no server URL is configured (BATCH_ENGINE_URLS)")

    async def __aenter__(self) -> "ServerPool":
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._session = aiohttp.ClientSession(
            # Idle connections close before the server's own keep-alive (uvicorn: 5 s) does.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=3),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=headers,
            raise_for_status=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for probe in self._probes:
            probe.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the pool as `async with`"
        return self._session

    # -- checks ------------------------------------------------------------------------------

    async def check(self) -> None:
        """Probe every server before the first request; a down one is retried later.

        Raises :class:`PoolMisconfigured` when every server answers and none serves the
        configured model.
        """
        results = await asyncio.gather(*(self._probe(s) for s in self.servers))
        for server, fault in zip(self.servers, results, strict=True):
            if fault is not None:
                logger.warning("vLLM server %s is not answering (%s); retried later", server, fault)
                self._mark_down(server)
        if self.serves(self.model) is False:
            served = "; ".join(f"{s} serves {sorted(s.models or ())}" for s in self.servers)
            raise PoolMisconfigured(
                f"no vLLM server serves the configured model {self.model!r} ({served}): start "
                f"one with --served-model-name {self.model}, or set BATCH_SERVED_MODEL_NAME to "
                "a name they serve"
            )

    async def _probe(self, server: Server) -> str | None:
        """``None`` when the server is healthy (its model names are noted); else why it is down."""
        timeout = aiohttp.ClientTimeout(total=_PROBE_TIMEOUT_S)
        try:
            async with self.session.get(f"{server.root}/health", timeout=timeout) as health:
                if health.status != 200:
                    return f"/health answered {health.status}"
            async with self.session.get(f"{server.url}/models", timeout=timeout) as models:
                status, text = models.status, await models.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status in (401, 403):
            raise PoolMisconfigured(
                f"vLLM server {server} refused the API key ({status}): set BATCH_ENGINE_API_KEY "
                "to the key the servers were started with (--api-key)"
            )
        if status != 200:
            return f"/v1/models answered {status}"
        try:
            entries = json.loads(text)["data"]
            names = frozenset(str(entry["id"]) for entry in entries)
            # vllm serve lists a LoRA adapter with its base model as its parent.
            bases = frozenset(str(e["id"]) for e in entries if not e.get("parent"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return "/v1/models did not answer a model list"
        server.models, server.bases = names, bases
        return None

    def serves(self, model: str) -> bool | None:
        """Whether some server serves ``model``; None while a server not yet probed might."""
        if any(s.models is not None and model in s.models for s in self.servers):
            return True
        return False if all(s.models is not None for s in self.servers) else None

    def base_names(self) -> list[str]:
        """The base models' names that the probed servers serve (adapters aside)."""
        return sorted({name for s in self.servers for name in s.bases})

    def revive(self) -> None:
        """Start a probe of every down server whose backoff is over (they run in the background)."""
        now = time.monotonic()
        for server in self.servers:
            if not server.up and not server.probing and now >= server.retry_at:
                server.probing = True
                probe = asyncio.create_task(self._revive(server))
                self._probes.add(probe)
                probe.add_done_callback(self._probes.discard)

    async def _revive(self, server: Server) -> None:
        try:
            fault = await self._probe(server)
        except PoolMisconfigured as misconfigured:  # e.g. restarted with another key
            self._fault = misconfigured
            return
        finally:
            server.probing = False
        if fault is None:
            logger.info("vLLM server %s answers again", server)
            server.up = True
            server.failures = 0
        else:
            self._mark_down(server)

    def raise_probe_errors(self) -> None:
        """Re-raise a configuration fault that a background probe found."""
        if self._fault is not None:
            raise self._fault

    # -- balancing ---------------------------------------------------------------------------

    def pick(self, model: str, avoid: Server | None = None) -> Server | None:
        """The up server serving ``model`` with the fewest requests in flight and room in its
        window.

        ``avoid`` (the server a request just failed on) is never picked while another server
        of the model is up: the request waits for room there rather than failing on ``avoid``
        again.
        """
        up = [s for s in self.servers if s.up and s.models is not None and model in s.models]
        if avoid is not None and any(s is not avoid for s in up):
            up = [s for s in up if s is not avoid]
        free = [s for s in up if s.in_flight < self.window]
        return min(free, key=lambda s: s.in_flight, default=None)

    def _mark_down(self, server: Server) -> None:
        """Take ``server`` out until a probe passes: at once after a first fault (a dropped
        keep-alive connection is not a dead server), then with a growing backoff."""
        server.failures += 1
        server.up = False
        delay = 0.0 if server.failures == 1 else _BACKOFF_FIRST_S * 2 ** (server.failures - 2)
        server.retry_at = time.monotonic() + min(_BACKOFF_MAX_S, delay)

    # -- requests ----------------------------------------------------------------------------

    def submit(self, server: Server, path: str, body: dict[str, Any]) -> "asyncio.Task[Answer]":
        """POST ``body`` to ``server``'s ``path`` (``/chat/completions``) in a task.

        The server counts the request as in flight from now until the task ends. The task's
        result is the answer, whatever its status; it raises :class:`ServerDown` (and takes
        the server out) when no answer comes back.
        """
        server.in_flight += 1
        task = asyncio.create_task(self._post(server, path, body))
        task.add_done_callback(lambda _: setattr(server, "in_flight", server.in_flight - 1))
        return task

    async def _post(self, server: Server, path: str, body: dict[str, Any]) -> Answer:
        try:
            async with self.session.post(f"{server.url}{path}", json=body) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if server.up:
                logger.warning("vLLM server %s dropped a request (%s)", server, type(exc).__name__)
                self._mark_down(server)
            raise ServerDown(f"{server}: {type(exc).__name__}: {exc}") from exc
        if status < 500 and status != 429:
            server.failures = 0
        elif server.up:
            server.failures += 1
            if server.failures >= _FAULTS_BEFORE_DOWN:
                logger.warning("vLLM server %s answers %d again and again", server, status)
                server.failures = 0  # it is up, just failing: probe it again soon
                self._mark_down(server)
        return Answer(status, _json_body(status, raw))


def _json_body(status: int, raw: bytes) -> dict[str, Any]:
    """The answer's JSON object, or an OpenAI error envelope around whatever text came."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    text = raw.decode("utf-8", errors="replace")[:500]
    return {
        "error": {
            "message": f"the vLLM server answered {status} without a JSON object: {text}",
            "type": "server_error" if status >= 500 else "invalid_request_error",
            "param": None,
            "code": str(status),
        }
    }
