"""The pool of running vLLM OpenAI servers as a Dagster resource: the engine is not in the run.

A run loads nothing: it keeps a window of requests in flight on each server
(:mod:`resources.engines.server_loop`, :mod:`resources.engines.servers`) and journals each
answer as it arrives. Its runs carry the pool tag, whose limit lets several share the
servers, and run their steps in the run's own process (no step loads an engine, so a process
per step would only cost seconds of imports on every small batch).

What a launchpad may override (run config ``resources.engine.config``): every field here,
the URLs and the key included (send one batch to another fleet). The mode itself is the
deployment's: an in-process engine's fields (``tensor_parallel_size``, ...) are not fields
here, so Dagster refuses them as unknown config.
"""

from collections.abc import Iterable
from typing import ClassVar

import dagster as dg
from pydantic import Field

from resources.engines.base import BatchEngine, LoopStats, RunControl
from resources.journal import JournalWriter
from resources.layout import ENGINE_POOL_TAGS


class VLLMServerPool(BatchEngine):
    """Base URLs of running vLLM OpenAI servers, and how a run uses them."""

    engine_urls: list[str] = Field(
        description="Base URLs of running vLLM OpenAI servers (http://host:8000/v1). Runs load "
        "no engine: they send each request to the least busy server.",
        min_length=1,
        json_schema_extra={"flag": "--engine-url", "metavar": "URL"},
    )
    engine_api_key: str | None = Field(
        default=None,
        description="API key of those servers (their --api-key); give it as dg.EnvVar.",
    )
    server_window: int = Field(default=256, description="Requests in flight per server.")
    server_timeout_s: float = Field(
        default=600.0, description="Seconds one request may take on a server before it is retried."
    )
    server_down_timeout_s: float = Field(
        default=60.0,
        description="Seconds a run waits for a server while none answers; then it fails, and its "
        "retry resumes from the journal.",
    )
    priority_scheduling: bool = Field(
        default=False,
        description="The servers run with --scheduling-policy priority: overnight work is sent "
        "at a lower priority than previews and ordinary uploads.",
    )

    MODE: ClassVar[str] = "pool"

    def run_tags(self) -> dict[str, str]:
        return dict(ENGINE_POOL_TAGS)

    def executor(self) -> dg.ExecutorDefinition | None:
        return dg.in_process_executor

    def run_pending(
        self,
        batch_id: str,
        endpoint: str,
        pending: Iterable[tuple[int, str]],
        journal: JournalWriter,
        control: RunControl,
    ) -> tuple[LoopStats, float]:
        from resources.engines.server_loop import ServerLoop, ServersUnavailable
        from resources.engines.servers import PoolMisconfigured, ServerPool

        served = self.served_model_names[0]
        loop = ServerLoop(
            pool=ServerPool(
                self.engine_urls,
                served,
                window=self.server_window,
                timeout_s=self.server_timeout_s,
                api_key=self.engine_api_key,
            ),
            journal=journal,
            endpoint=endpoint,
            model=served,
            aliases=frozenset(self.served_model_names),
            down_timeout_s=self.server_down_timeout_s,
            priority=control.priority if self.priority_scheduling else None,
            control=control,
        )
        try:
            return loop.run(pending), 0.0
        except (PoolMisconfigured, ServersUnavailable) as error:
            raise dg.Failure(f"batch {batch_id}: {error}") from error
