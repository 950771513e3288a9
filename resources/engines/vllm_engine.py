"""The in-process vLLM engine as a Dagster resource: loaded once per run, released after.

Loading is lazy (the first :meth:`VLLMEngine.load` call in a step), so a step that only needs
the served model names, such as input validation, never pays for an engine (nor imports vLLM).
Its runs carry the GPU tag, so the run queue runs one per GPU, and on Kubernetes the tag that
asks for ``tensor_parallel_size`` GPUs. The other engine of the protocol
(:mod:`resources.engines.base`) is the pool of running servers, :mod:`resources.engines.pool`.

What a launchpad may override (run config ``resources.engine.config``): any field but
``tensor_parallel_size``, which decides the run's GPU tags (a run whose engine needs other
tags fails at once, see :meth:`BatchEngine.check_run_tags`), and the mode itself (a pool's
``engine_urls`` is not a field here, so Dagster refuses it as unknown config).
"""

import gc
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, PrivateAttr, field_validator

from resources.endpoints import POOLING_URLS, SCORING_URLS
from resources.engines.base import BatchEngine, LoopStats, RunControl, ServedNames
from resources.images import ImagePolicy
from resources.journal import JournalWriter
from resources.layout import GPU_TAGS, K8S_CONFIG_TAG

if TYPE_CHECKING:
    from vllm import LLM

logger = logging.getLogger(__name__)

Runner = Literal["generate", "pooling"]
_CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
# Engines kept alive between runs of one process when ``keep_loaded`` is set.
_KEPT: dict[str, "LLM"] = {}
# Settings of the loop around the engine, not of the engine: one kept engine serves them all.
_LOOP_ONLY = frozenset(
    {
        "model_aliases",
        "clamp_max_tokens",
        "max_pending_requests",
        "keep_loaded",
        # vLLM's serving layer reads these, not the engine (as in vllm serve).
        "tool_call_parser",
        "enable_auto_tool_choice",
        "reasoning_parser",
    }
)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def parse_lora_modules(modules: list[str]) -> dict[str, str]:
    """``{"name": "path"}`` of ``NAME=PATH`` items (vllm serve --lora-modules' plain form)."""
    adapters: dict[str, str] = {}
    for item in modules:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"lora_modules: {item!r} is not NAME=PATH")
        adapters[name.strip()] = path.strip()
    return adapters


class VLLMEngine(BatchEngine):
    """Engine settings. The defaults suit one GPU; the CPU defaults are filled in on load."""

    tokenizer: str | None = Field(default=None, description="Tokenizer folder, if not the model's.")
    dtype: str = Field(default="auto", description="Weights and activations dtype.")
    max_model_len: int | None = Field(default=None, description="Context length; model's if unset.")
    max_num_seqs: int | None = Field(default=None, description="Sequences per engine step.")
    max_num_batched_tokens: int | None = Field(
        default=None, description="Tokens per engine step (vLLM advises >= 8192 for throughput)."
    )
    gpu_memory_utilization: float = Field(default=0.9, description="Share of GPU memory to use.")
    tensor_parallel_size: int = Field(default=1, description="GPUs per engine (tensor parallel).")
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse KV cache across shared prompt prefixes; vLLM's default."
    )
    enforce_eager: bool | None = Field(
        default=None,
        description="Skip graph capture / torch.compile; unset: eager on CPU, compiled on GPU.",
    )
    seed: int = Field(default=0, description="Engine seed; per-request `seed` overrides it.")
    kv_cache_memory_bytes: int | None = Field(
        default=None,
        description="KV cache size in bytes; on CPU when unset, VLLM_CPU_KVCACHE_SPACE (GiB) "
        "or else 1 GiB.",
    )
    load_format: str = Field(
        default="auto", description="'dummy' builds random weights from config.json (benchmarks)."
    )
    engine_in_process: bool | None = Field(
        default=None,
        description="Run the engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0). "
        "Unset: in-process on CPU (starts ~7x faster), a separate process on GPU.",
    )
    clamp_max_tokens: bool = Field(
        default=False,
        description="Clamp max_tokens to the remaining context like `vllm serve` does, instead "
        "of rejecting the request with a 400 error line as the OpenAI API does.",
    )
    max_pending_requests: int = Field(
        default=0,
        description="Requests queued in the engine at once; 0 means 4 x max_num_seqs.",
    )
    disable_any_whitespace: bool = Field(
        default=False,
        description="JSON structured output without free whitespace (the xgrammar backend), as "
        "vllm serve --structured-outputs-config.disable_any_whitespace: a weak model cannot "
        "loop on newlines inside JSON.",
    )
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM's tool-call parser (vllm serve --tool-call-parser: hermes, llama3_json, "
        "mistral, ...): a chat answer's tool calls become message.tool_calls.",
    )
    enable_auto_tool_choice: bool = Field(
        default=False,
        description="Let the model decide to call tools (tool_choice auto), as vllm serve "
        "--enable-auto-tool-choice; needs tool_call_parser.",
    )
    reasoning_parser: str | None = Field(
        default=None,
        description="vLLM's reasoning parser (vllm serve --reasoning-parser: qwen3, "
        "deepseek_r1, ...): the thinking goes to message.reasoning, the answer to content.",
    )
    lora_modules: list[str] = Field(
        default_factory=list,
        description="LoRA adapters a line may name in body.model, NAME=PATH each, as vllm serve "
        "--lora-modules; giving any enables LoRA. One batch may mix the base model and adapters.",
        json_schema_extra={"flag": "--lora-modules", "metavar": "NAME=PATH"},
    )
    max_loras: int | None = Field(
        default=None, description="Adapters in one engine step (vLLM's default: 1)."
    )
    max_lora_rank: int | None = Field(
        default=None, description="The largest adapter rank served (vLLM's default: 16)."
    )
    mm_processor_cache_gb: float = Field(
        default=0.0,
        description="vLLM's cache of processed images, in GiB. It saves work only when lines "
        "repeat an image, and grows with a file of distinct ones: off by default here (memory "
        "stays flat on a file of images), 4 in vllm serve.",
    )
    keep_loaded: bool = Field(
        default=False,
        description="Keep the engine alive in this process for the next run (one-shot CLI, tests).",
    )
    _llm: Any = PrivateAttr(default=None)

    @field_validator("lora_modules")
    @classmethod
    def _adapters_are_name_path(cls, value: list[str]) -> list[str]:
        parse_lora_modules(value)
        return value

    MODE: ClassVar[str] = "in_process"
    LOADS_IN_RUN: ClassVar[bool] = True
    GROUPS_LINES_BY_MODEL: ClassVar[bool] = True

    @property
    def tokenizer_folder(self) -> str:
        return self.tokenizer or self.model

    @property
    def adapters(self) -> dict[str, str]:
        """Each LoRA adapter's name and path, from ``lora_modules``."""
        return parse_lora_modules(self.lora_modules)

    @property
    def model_names(self) -> ServedNames:
        return ServedNames(tuple(self.served_model_names), tuple(self.adapters))

    @property
    def context_length(self) -> int | None:
        return self.max_model_len

    def run_tags(self) -> dict[str, str]:
        """GPU_TAGS (the shipped instance runs one such run per GPU) and, for Kubernetes, the
        run pod's GPUs and the GPU nodes' toleration (ignored by other launchers)."""
        gpus = {"nvidia.com/gpu": str(self.tensor_parallel_size)}
        toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        pod = {
            "container_config": {"resources": {"limits": gpus}},
            "pod_spec_config": {"tolerations": [toleration]},
        }
        return {**GPU_TAGS, K8S_CONFIG_TAG: json.dumps(pod, separators=(",", ":"))}

    def run_pending(
        self,
        batch_id: str,
        endpoint: str,
        pending: Iterable[tuple[int, str]],
        journal: JournalWriter,
        control: RunControl,
    ) -> tuple[LoopStats, float]:
        from resources.engines.inference_loop import InferenceLoop
        from resources.engines.openai_to_vllm import RequestBuilder
        from resources.engines.vllm_to_openai import ResponseBuilder

        started = time.monotonic()
        runner: Runner = "pooling" if endpoint in POOLING_URLS else "generate"
        llm = self.load(runner)
        load_s = time.monotonic() - started
        max_num_seqs = llm.llm_engine.vllm_config.scheduler_config.max_num_seqs
        served = self.served_model_names[0]
        serving = None if runner == "pooling" else self._serving_layer(llm, batch_id)
        scoring = self._scoring_layer(llm, batch_id) if endpoint in SCORING_URLS else None
        loop = InferenceLoop(
            llm=llm,
            requests=RequestBuilder(
                llm,
                clamp_max_tokens=self.clamp_max_tokens,
                serving=serving,
                adapters=self.adapters,
                scoring=scoring,
                images=ImagePolicy.from_env(),
            ),
            responses=ResponseBuilder(served, llm.get_tokenizer(), serving, scoring),
            journal=journal,
            batch_id=batch_id,
            endpoint=endpoint,
            window=self.max_pending_requests or 4 * max_num_seqs,
            control=control,
            separate_adapters=bool(self.adapters) and _on_cpu(),
        )
        try:
            return loop.run(pending), load_s
        except Exception as error:
            if type(error).__name__ != "EngineDeadError":
                raise
            self.discard()  # a kept engine is dead: the next run builds a new one
            raise dg.Failure(
                f"batch {batch_id}: the vLLM engine died mid-batch (out of memory or a crash: "
                f"{error}); the answers finished so far are journaled and a rerun resumes"
            ) from error

    def _serving_layer(self, llm: Any, batch_id: str) -> Any:
        """vLLM's serving layer with the engine's parsers (tools, reasoning, Responses)."""
        from resources.engines.vllm_serving import ServingLayer

        try:
            return ServingLayer(
                llm,
                self.served_model_names[0],
                self.tool_call_parser,
                self.enable_auto_tool_choice,
                self.reasoning_parser,
            )
        except (TypeError, KeyError, ValueError) as error:  # e.g. a parser vLLM does not have
            raise dg.Failure(f"batch {batch_id}: the engine's parser settings: {error}") from error

    def _scoring_layer(self, llm: Any, batch_id: str) -> Any:
        """vLLM's scoring layer (score, rerank) over the pooling engine."""
        from resources.engines.vllm_scoring import ScoringLayer

        try:
            return ScoringLayer(llm, self.served_model_names[0])
        except (AssertionError, ValueError) as error:  # a model that scores nothing
            raise dg.Failure(
                f"batch {batch_id}: {self.model} cannot answer score or rerank lines as a "
                f"pooling model ({type(error).__name__}: {error})",
                allow_retries=False,
            ) from error

    def _cache_key(self, runner: Runner) -> str:
        return f"{runner}:{self.model_dump_json(exclude=set(_LOOP_ONLY))}"

    def load(self, runner: Runner = "generate") -> "LLM":
        """The engine for ``runner``, loaded on first use in this step."""
        if self._llm is not None:
            return self._llm
        key = self._cache_key(runner)
        if self.keep_loaded and key in _KEPT:
            self._llm = _KEPT[key]
            return self._llm
        self._llm = self._build(runner)
        if self.keep_loaded:
            _KEPT[key] = self._llm
        return self._llm

    def _build(self, runner: Runner) -> "LLM":
        if self.kv_cache_memory_bytes is not None:
            # vllm-cpu lets this variable override kv_cache_memory_bytes: the field wins here.
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        in_process = on_cpu if self.engine_in_process is None else self.engine_in_process
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": self.model,
            "tokenizer": self.tokenizer,
            "served_model_name": self.served_model_names[0],
            "dtype": self.dtype,
            "seed": self.seed,
            "enforce_eager": on_cpu if self.enforce_eager is None else self.enforce_eager,
            "tensor_parallel_size": self.tensor_parallel_size,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "load_format": self.load_format,
            "runner": runner,
        }
        optional = {
            "max_model_len": self.max_model_len,
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "enable_prefix_caching": self.enable_prefix_caching,
            "mm_processor_cache_gb": self.mm_processor_cache_gb,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes
            or (_CPU_DEFAULT_KV_CACHE_BYTES if on_cpu else None),
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        if self.adapters:
            kwargs["enable_lora"] = True
            lora = {"max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank}
            kwargs.update({k: v for k, v in lora.items() if v is not None})
        if self.disable_any_whitespace:
            kwargs["structured_outputs_config"] = {
                "backend": "xgrammar",
                "disable_any_whitespace": True,
            }
        logger.info("loading vLLM engine for %s (runner=%s)", self.model, runner)
        return LLM(**kwargs)

    def discard(self) -> None:
        """Forget the loaded engine (it died): the next :meth:`load` builds a new one."""
        for key in [k for k, llm in _KEPT.items() if llm is self._llm]:
            del _KEPT[key]
        self._llm = None
        gc.collect()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._llm is not None and not self.keep_loaded:
            self._llm = None
            gc.collect()
