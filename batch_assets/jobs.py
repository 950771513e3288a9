"""The jobs over the batch assets: run a batch, preview it, publish a cancelled one."""

import json

import dagster as dg

from batch_assets.inference.asset import batch_inference
from batch_assets.input.asset import batch_input
from batch_assets.results.asset import batch_results
from batch_assets.results.preview import batch_preview
from resources.engines.vllm_engine import VLLMEngine
from resources.layout import ENGINE_POOL_TAGS, GPU_TAGS, K8S_CONFIG_TAG


def engine_run_tags(engine: VLLMEngine) -> dict[str, str]:
    """The tags of the runs that use ``engine``.

    In-process: GPU_TAGS (the shipped instance runs one such run per GPU) and, for
    Kubernetes, the run pod's GPUs and the GPU nodes' toleration (ignored by other launchers).
    Pool mode: ENGINE_POOL_TAGS, whose limit lets several runs share the servers; no GPU.
    """
    if engine.pooled:
        return dict(ENGINE_POOL_TAGS)
    gpus = {"nvidia.com/gpu": str(engine.tensor_parallel_size)}
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    pod = {
        "container_config": {"resources": {"limits": gpus}},
        "pod_spec_config": {"tolerations": [toleration]},
    }
    return {**GPU_TAGS, K8S_CONFIG_TAG: json.dumps(pod, separators=(",", ":"))}


batch_assets = [batch_input, batch_inference, batch_results, batch_preview]
# The code location's engine mode (BATCH_ENGINE_URLS), read once as it loads, as the
# resources are.
_ENGINE = VLLMEngine.from_env()
ENGINE_TAGS = engine_run_tags(_ENGINE)
# A pool run's steps load no engine: they run in the run's own process, which saves the
# seconds of a process start (imports, the code location) per step that many small batches
# would otherwise pay on every run. In-process runs keep a process per step.
ENGINE_EXECUTOR = dg.in_process_executor if _ENGINE.pooled else None
batch_job = dg.define_asset_job(
    "batch_job",
    selection=dg.AssetSelection.assets(batch_input, batch_inference, batch_results),
    description="Validate, run and publish one batch (one partition).",
    tags=ENGINE_TAGS,
    executor_def=ENGINE_EXECUTOR,
)
preview_job = dg.define_asset_job(
    "preview_job",
    selection=dg.AssetSelection.assets(batch_input, batch_preview),
    description="Validate a batch and answer its first requests (overnight uploads).",
    tags=ENGINE_TAGS,
    executor_def=ENGINE_EXECUTOR,
)
cancel_job = dg.define_asset_job(
    "cancel_job",
    selection=dg.AssetSelection.assets(batch_input, batch_results),
    description="Publish a cancelled batch: finished lines kept, the rest batch_cancelled. "
    "Loads no engine, so it does not wait for the GPU.",
)
