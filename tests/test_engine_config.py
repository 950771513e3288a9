"""The deployment's engine: the config file, the environment, the flags, and a launchpad's
override of the engine resource's config."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from resources.engines.base import RunControl
from resources.engines.config import (
    CONFIG_ENV,
    EngineConfigError,
    engine_from_env,
    read_engine_config,
)
from resources.engines.pool import VLLMServerPool
from resources.engines.vllm_engine import VLLMEngine
from resources.layout import ENGINE_POOL_TAGS, GPU_TAG, K8S_CONFIG_TAG
from tests.conftest import MAX_MODEL_LEN, ROOT, chat_body, request_line


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for var in (CONFIG_ENV, "BATCH_MODEL", "BATCH_ENGINE_URLS", "BATCH_SERVED_MODEL_NAME"):
        monkeypatch.delenv(var, raising=False)


def _config(tmp_path: Path, text: str, monkeypatch) -> Path:
    path = tmp_path / "engine.yaml"
    path.write_text(text)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return path


def test_the_config_file_takes_the_run_flags_as_keys(tmp_path, monkeypatch):
    _config(
        tmp_path,
        "model: /models/llama\nmax-model-len: 4096\n--gpu-memory-utilization: 0.8\n"
        "tensor_parallel_size: 2\nmodel-aliases: [llama, default]\ntool-call-parser: hermes\n",
        monkeypatch,
    )
    engine = engine_from_env()
    assert isinstance(engine, VLLMEngine)
    assert (engine.model, engine.max_model_len, engine.gpu_memory_utilization) == (
        "/models/llama",
        4096,
        0.8,
    )
    assert engine.tensor_parallel_size == 2 and engine.tool_call_parser == "hermes"
    assert engine.served_model_names == ["/models/llama", "llama", "default"]


def test_the_environment_beats_the_file_and_the_flags_beat_both(tmp_path, monkeypatch):
    _config(tmp_path, "model: from-file\nseed: 3\n", monkeypatch)
    monkeypatch.setenv("BATCH_MODEL", "from-env")
    assert engine_from_env().model == "from-env"
    assert engine_from_env(model="from-flag").model == "from-flag"
    assert engine_from_env().seed == 3


def test_servers_in_the_file_make_it_a_pool(tmp_path, monkeypatch):
    _config(tmp_path, "engine-url: [http://vllm:8000/v1]\nserver-window: 64\n", monkeypatch)
    engine = engine_from_env()
    assert isinstance(engine, VLLMServerPool)
    assert engine.engine_urls == ["http://vllm:8000/v1"] and engine.server_window == 64
    assert engine.run_tags() == ENGINE_POOL_TAGS
    assert engine.executor() is dg.in_process_executor


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("max-model-length: 4096\n", "'max-model-length' is not an engine setting"),
        ("max-model-len: many\n", "max_model_len"),
        ("engine-url: [http://vllm:8000/v1]\nmax-model-len: 512\n", "--max-model-len"),
        ("server-window: 64\n", "--server-window"),
        ("- a list\n", "expected a mapping"),
        ("model: [unclosed\n", "cannot be read"),
    ],
)
def test_a_bad_config_file_names_what_is_wrong(tmp_path, monkeypatch, text, named):
    path = _config(tmp_path, text, monkeypatch)
    with pytest.raises(EngineConfigError) as refused:
        engine_from_env()
    assert named in str(refused.value)
    if "not an engine setting" in named:
        assert str(path) in str(refused.value)


def test_the_code_location_does_not_load_with_a_bad_config_file(tmp_path):
    path = tmp_path / "engine.yaml"
    path.write_text("max-num-seqs: 8\nmax-num-sequences: 8\n")
    done = subprocess.run(
        [sys.executable, "-c", "import batch_assets.definitions"],
        env={"PATH": "/usr/bin:/bin", CONFIG_ENV: str(path), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode != 0
    assert "'max-num-sequences' is not an engine setting" in done.stderr


def test_an_empty_config_file_sets_nothing(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing set yet\n")
    assert read_engine_config(empty) == {}


def test_a_run_with_the_other_modes_tags_fails_at_once():
    local = VLLMEngine(model="m")
    pool = VLLMServerPool(model="m", engine_urls=["http://a:1/v1"])
    local.check_run_tags(local.run_tags())  # its own tags
    local.check_run_tags({})  # a run without engine tags (an ad-hoc materialization)
    pool.check_run_tags(pool.run_tags())
    with pytest.raises(dg.Failure, match="another engine"):
        local.check_run_tags(pool.run_tags())
    with pytest.raises(dg.Failure, match="another engine"):
        pool.check_run_tags({GPU_TAG: "engine"})
    wider = VLLMEngine(model="m", tensor_parallel_size=2)
    with pytest.raises(dg.Failure, match=K8S_CONFIG_TAG):
        wider.check_run_tags(local.run_tags())


def test_run_control_polls_cancel_and_reports_at_its_intervals():
    calls, reports = [], []
    control = RunControl(
        cancel_check=lambda: calls.append(1) or len(calls) >= 2,
        cancel_poll_s=0.0,
        on_progress=reports.append,
        progress_interval_s=3600,
    )
    control.start()
    assert not control.cancel_requested() and control.cancel_requested()
    control.tick(object())  # type: ignore[arg-type]
    assert reports == []  # not yet due
    assert not RunControl(deadline=None).deadline_passed()
    assert RunControl(deadline=1.0).deadline_passed()


def _launchpad(engine: VLLMEngine, **changes) -> dict:
    """A launchpad's run config for the engine: Dagster replaces the resource's config as a
    whole, so it restates every field (the scaffold the launchpad shows) and changes some."""
    fields = {k: v for k, v in engine.model_dump().items() if v is not None}
    return {"resources": {"engine": {"config": {**fields, **changes}}}}


@pytest.mark.slow
def test_a_launchpad_may_override_loop_fields_but_not_the_gpus(run_batch, engine):
    long = request_line("long", chat_body("count", max_tokens=MAX_MODEL_LEN + 100))
    plain = run_batch(long, name="plain.jsonl")
    assert plain.by_id()["long"]["response"]["status_code"] == 400  # past the context
    clamped = run_batch(
        long, name="clamped.jsonl", run_config=_launchpad(engine, clamp_max_tokens=True)
    )
    assert clamped.batch["status"] == "completed"
    assert clamped.by_id()["long"]["response"]["status_code"] == 200  # the override took

    refused = run_batch(
        request_line("a", chat_body()),
        name="refused.jsonl",
        run_config=_launchpad(engine, tensor_parallel_size=2),
    )
    assert refused.batch["status"] == "failed"
    (error,) = refused.batch["errors"]["data"]
    assert "another engine" in error["message"] and "tensor_parallel_size" in error["message"]
    with pytest.raises(dg.DagsterInvalidConfigError, match="engine_urls"):
        run_batch(
            request_line("b", chat_body()),
            name="pool.jsonl",
            run_config=_launchpad(engine, engine_urls=["http://a:1/v1"]),
        )
