"""deploy/: what one machine can check of the Kubernetes deployment.

The run launcher and run coordinator of the Helm values load in a real Dagster instance with
dagster-k8s; the run pod that dagster-k8s's own builder makes from the project's run tags
carries the GPU limit (in-process) or none (pool mode); every manifest passes the Kubernetes
schema (strict: an unknown field fails). Helm itself, a cluster and GPUs are not here.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest
import yaml
from dagster._core.storage.dagster_run import DagsterRun
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job
from kubernetes.client import ApiClient

from resources.engines.config import engine_from_env
from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine
from resources.layout import ENGINE_POOL_TAG, GPU_TAG
from resources.webhooks import WebhookSender
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.31.0"
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: batch}}]
current-context: x
"""


def _values() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _instance_yaml(values: dict[str, Any], kubeconfig: Path) -> dict[str, Any]:
    """The run launcher, coordinator, retries and monitoring as the chart renders them
    (templates/helpers/instance/_run-launcher.tpl and friends); storage stays local here."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    return {
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": False,  # a cluster's own config is not here
                "kubeconfig_file": str(kubeconfig),
                "job_namespace": "batch",
                "image_pull_policy": launcher["imagePullPolicy"],
                "env_config_maps": launcher["envConfigMaps"],
                "env_secrets": launcher["envSecrets"],
                "env_vars": launcher["envVars"],
                "volume_mounts": launcher["volumeMounts"],
                "volumes": launcher["volumes"],
                "fail_pod_on_run_failure": launcher["failPodOnRunFailure"],
                "service_account_name": "batch-dagster",
                # What the chart fills in for a release named "batch".
                "instance_config_map": "batch-dagster-instance",
                "postgres_password_secret": "dagster-postgresql-secret",
                "dagster_home": "/opt/dagster/dagster_home",
            },
        },
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": queued["maxConcurrentRuns"],
                "tag_concurrency_limits": queued["tagConcurrencyLimits"],
            },
        },
        "run_retries": {"enabled": True, "max_retries": daemon["runRetries"]["maxRetries"]},
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
            "poll_interval_seconds": daemon["runMonitoring"]["pollIntervalSeconds"],
        },
    }


@pytest.fixture
def k8s_instance(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(_instance_yaml(_values(), kubeconfig)))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance


def test_the_helm_values_load_as_a_k8s_instance_with_the_shipped_limits(k8s_instance):
    assert isinstance(k8s_instance.run_launcher, K8sRunLauncher)
    assert k8s_instance.run_launcher.fail_pod_on_run_failure is True
    queue = k8s_instance.get_concurrency_config().run_queue_config
    assert queue is not None
    shipped = yaml.safe_load((ROOT / "dagster_home" / "dagster.yaml").read_text())
    limits = shipped["concurrency"]["runs"]["tag_concurrency_limits"]
    assert queue.tag_concurrency_limits == limits  # the same limits on K8s as under dagster dev
    assert {limit["key"] for limit in limits} == {GPU_TAG, ENGINE_POOL_TAG}
    assert queue.max_concurrent_runs == shipped["concurrency"]["runs"]["max_concurrent_runs"]
    assert k8s_instance.run_retries_max_retries == shipped["run_retries"]["max_retries"]


def _run_pod(instance: dg.DagsterInstance, tags: dict[str, str]) -> dict[str, Any]:
    """The Job that the K8s run launcher would create for a run with ``tags``, as a dict."""
    launcher = instance.run_launcher
    run = DagsterRun(job_name="batch_job", run_id="0123456789abcdef", tags=tags)
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(
            job_image="ghcr.io/your-org/dagster-vllm-batch:0.1.0", run_launcher=launcher
        ),
        args=["dagster", "api", "execute_run"],
        job_name="dagster-run-0123456789abcdef",
        user_defined_k8s_config=context.run_k8s_config,
        component="run_worker",
    )
    body = ApiClient().sanitize_for_serialization(job)
    kubernetes_validate.validate(body, K8S_VERSION, strict=True)
    return body


def test_in_process_run_pods_ask_for_their_gpus_and_pool_run_pods_for_none(
    k8s_instance, tiny_model
):
    one = _run_pod(k8s_instance, VLLMEngine(model=str(tiny_model)).run_tags())
    spec = one["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    two = _run_pod(
        k8s_instance, VLLMEngine(model=str(tiny_model), tensor_parallel_size=2).run_tags()
    )
    assert two["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "2"
    }
    pooled = VLLMServerPool(model=str(tiny_model), engine_urls=["http://vllm-pool:8000/v1"])
    tags = pooled.run_tags()
    assert GPU_TAG not in tags and ENGINE_POOL_TAG in tags
    container = _run_pod(k8s_instance, tags)["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in str(container.get("resources"))


@pytest.mark.parametrize("name,doc", _manifests(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_manifest_passes_the_kubernetes_schema(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_pool_the_values_and_the_api_name_the_same_model_and_service():
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _manifests()}
    pool = docs[("Deployment", "vllm-pool")]["spec"]["template"]["spec"]["containers"][0]
    args = pool["args"]
    served = args[args.index("--served-model-name") + 1]
    port = args[args.index("--port") + 1]
    (deployment,) = _values()["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert env["BATCH_SERVED_MODEL_NAME"] == served
    service = docs[("Service", "vllm-pool")]
    assert env["BATCH_ENGINE_URLS"].startswith(f"http://{service['metadata']['name']}.")
    assert env["BATCH_ENGINE_URLS"].endswith(f":{port}/v1")
    assert service["spec"]["ports"][0]["port"] == int(port)
    assert pool["resources"]["limits"]["nvidia.com/gpu"] == "1"
    api = docs[("Deployment", "batch-api")]["spec"]["template"]["spec"]["containers"][0]
    api_env = {item["name"]: item["value"] for item in api["env"]}
    assert api_env["BATCH_STORAGE"] == env["BATCH_STORAGE"]
    assert api_env["BATCH_SERVED_MODEL_NAME"] == served


def test_the_values_mount_an_engine_config_the_code_location_accepts(tmp_path, monkeypatch):
    (deployment,) = _values()["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    (mount,) = deployment["volumeMounts"]
    (volume,) = deployment["volumes"]
    assert mount["name"] == volume["name"]
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _manifests()}
    config_map = docs[("ConfigMap", volume["configMap"]["name"])]
    path = Path(env["BATCH_ENGINE_CONFIG"])
    assert path.parent == Path(mount["mountPath"]) and path.name in config_map["data"]
    local = tmp_path / path.name
    local.write_text(config_map["data"][path.name])
    monkeypatch.setenv("BATCH_ENGINE_CONFIG", str(local))
    monkeypatch.setenv("BATCH_ENGINE_URLS", env["BATCH_ENGINE_URLS"])
    engine = engine_from_env(model=env["BATCH_MODEL"])
    assert isinstance(engine, VLLMServerPool) and engine.server_down_timeout_s == 120


def test_the_values_give_each_project_a_webhook_the_code_location_accepts():
    (deployment,) = _values()["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    secrets = {s["name"] for s in deployment["envSecrets"]}
    docs = {(doc["kind"], doc["metadata"]["name"]): doc for _, doc in _manifests()}
    (secret_name,) = [
        n for n in secrets if "BATCH_WEBHOOK_SECRETS" in docs[("Secret", n)]["stringData"]
    ]
    sender = WebhookSender(
        endpoints=env["BATCH_WEBHOOKS"],
        secrets=docs[("Secret", secret_name)]["stringData"]["BATCH_WEBHOOK_SECRETS"],
        retry_hours=float(env["BATCH_WEBHOOK_RETRY_HOURS"]),
    )
    sender.check()
    projects = set(env["BATCH_PROJECTS"].split(","))
    assert {p for p in projects if sender.url_for(p)} == projects
