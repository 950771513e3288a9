"""The vLLM engine as a Dagster resource: configured here, loaded once per run, released after.

Loading is lazy (the first :meth:`VLLMEngine.load` call in a step), so a step that only needs
the served model names, such as input validation, never pays for an engine. With
``engine_urls`` set (pool mode) nothing is loaded: runs send their requests to those
long-running vLLM OpenAI servers (:mod:`resources.engines.servers`).
"""

import gc
import logging
import os
import typing
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import dagster as dg
from pydantic import Field, PrivateAttr

if TYPE_CHECKING:
    from vllm import LLM

logger = logging.getLogger(__name__)

Runner = Literal["generate", "pooling"]
DEFAULT_MODEL = "./models/tiny-chat"  # what `make model` generates (BATCH_MODEL unset)
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
# Settings of pool mode: an engine in the run never reads them.
POOL_FIELDS = frozenset(
    {
        "engine_urls",
        "engine_api_key",
        "server_window",
        "server_timeout_s",
        "server_down_timeout_s",
        "priority_scheduling",
    }
)


class VLLMEngine(dg.ConfigurableResource):
    """Engine settings. The defaults suit one GPU; the CPU defaults are filled in on load."""

    model: str = Field(description="Local model folder or model name.")
    served_model_name: str | None = Field(
        default=None,
        description="Name a request's body.model must use; defaults to `model`, as in vllm serve.",
    )
    model_aliases: list[str] = Field(
        default_factory=list, description="Further names accepted in body.model."
    )
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
    keep_loaded: bool = Field(
        default=False,
        description="Keep the engine alive in this process for the next run (one-shot CLI, tests).",
    )
    # Pool mode: long-running vLLM OpenAI servers instead of an engine in the run.
    engine_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of running vLLM OpenAI servers (http://host:8000/v1). When set, "
        "runs load no engine: they send each request to the least busy server.",
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

    _llm: Any = PrivateAttr(default=None)
    # Fields a deployment sets from the environment (the code location and the CLI alike).
    # A list field's variable is comma-separated; a secret's is passed on as dg.EnvVar, so
    # Dagster resolves it when the run starts and never shows or stores its value.
    ENV: ClassVar[dict[str, str]] = {
        "model": "BATCH_MODEL",
        "served_model_name": "BATCH_SERVED_MODEL_NAME",
        "engine_urls": "BATCH_ENGINE_URLS",
        "engine_api_key": "BATCH_ENGINE_API_KEY",
    }
    SECRETS: ClassVar[frozenset[str]] = frozenset({"engine_api_key"})

    @classmethod
    def from_env(cls, **fields: Any) -> "VLLMEngine":
        """The engine of ``fields``; unset ones in :attr:`ENV` come from the environment."""
        from_env: dict[str, Any] = {}
        for name, var in cls.ENV.items():
            value = os.environ.get(var, "").strip()
            if not value:
                continue
            if name in cls.SECRETS:
                from_env[name] = dg.EnvVar(var)
            elif typing.get_origin(cls.model_fields[name].annotation) is list:
                from_env[name] = [part.strip() for part in value.split(",") if part.strip()]
            else:
                from_env[name] = value
        return cls(**{"model": DEFAULT_MODEL, **from_env, **fields})

    @property
    def pooled(self) -> bool:
        """Whether runs send requests to the servers of :attr:`engine_urls` (no engine loaded)."""
        return bool(self.engine_urls)

    @property
    def served_model_names(self) -> list[str]:
        """Every name a request may use; the first is the one reported in responses."""
        primary = self.served_model_name or self.model
        return [primary, *(a for a in self.model_aliases if a != primary)]

    def _cache_key(self, runner: Runner) -> str:
        return f"{runner}:{self.model_dump_json(exclude=set(_LOOP_ONLY | POOL_FIELDS))}"

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
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes
            or (_CPU_DEFAULT_KV_CACHE_BYTES if on_cpu else None),
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
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
