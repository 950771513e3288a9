"""Shared fixtures: the tiny generated model, one engine per session, batch helpers."""

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import msgspec
import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_model import ensure  # noqa: E402

from batch_assets.cli.runner import run_file  # noqa: E402
from batch_assets.lifecycle.batches import (  # noqa: E402
    BatchRecord,
    BatchStatus,
    Transition,
    transition,
)
from batch_assets.lifecycle.files import read_file_record  # noqa: E402
from resources.engines.vllm_engine import VLLMEngine  # noqa: E402
from resources.layout import BatchPaths  # noqa: E402
from resources.storage import BatchStorage  # noqa: E402

MODEL_NAME = "tiny-chat"
MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return ensure(ROOT / "models" / "tiny-chat")


@pytest.fixture(scope="session")
def engine(tiny_model: Path) -> VLLMEngine:
    """One engine for the whole session (kept loaded between runs)."""
    return VLLMEngine(
        model=str(tiny_model),
        served_model_name=MODEL_NAME,
        max_model_len=MAX_MODEL_LEN,
        keep_loaded=True,
    )


# In-process test runs keep no compute logs: Dagster's local manager mirrors each run's output
# through `tail -F` processes, which a busy machine can leave waiting (30 s at each run's end)
# and which nothing here reads. The `dagster dev` tests keep the shipped instance's manager.
QUIET_INSTANCE = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
}


def quiet_instance():
    """A throwaway Dagster instance for in-process runs (``with quiet_instance() as i``)."""
    return dg.instance_for_test(overrides=QUIET_INSTANCE)


@pytest.fixture(scope="session")
def instance() -> dg.DagsterInstance:
    with quiet_instance() as inst:
        yield inst


def request_line(
    custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions", **extra: Any
) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra})


def chat_body(content: Any = "hello world", **params: Any) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **params,
    }


def request_ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(count)]


def chat_requests(prefix: str, count: int, max_tokens: int = 16) -> str:
    """``count`` chat request lines, each generating exactly ``max_tokens`` tokens."""
    return "".join(
        request_line(cid, chat_body(f"tell {cid}", max_tokens=max_tokens, ignore_eos=True)) + "\n"
        for cid in request_ids(prefix, count)
    )


# The legal path from ``validating`` to each status (the lifecycle's own transitions).
PATHS = {
    BatchStatus.IN_PROGRESS: [Transition.START],
    BatchStatus.FINALIZING: [Transition.FINALIZE],
    BatchStatus.COMPLETED: [Transition.START, Transition.FINALIZE, Transition.COMPLETE],
    BatchStatus.EXPIRED: [Transition.FINALIZE, Transition.EXPIRE],
    BatchStatus.CANCELLING: [Transition.REQUEST_CANCEL],
    BatchStatus.CANCELLED: [Transition.REQUEST_CANCEL, Transition.CONFIRM_CANCEL],
    BatchStatus.FAILED: [Transition.FAIL],
}


def drive(storage: BatchStorage, batch_id: str, status: str) -> None:
    """Take a ``validating`` batch to ``status`` through the lifecycle's transitions."""
    for move in PATHS[BatchStatus(status)]:
        transition(storage, batch_id, move)


def store_status(storage: BatchStorage, batch_id: str, status: str) -> None:
    """Leave the stored record at ``status`` as a crash would (no transition checks)."""
    paths = BatchPaths(batch_id)
    record = msgspec.json.decode(storage.read_bytes(paths.batch_json), type=BatchRecord)
    record.status = BatchStatus(status)
    storage.write_bytes(paths.batch_json, msgspec.json.encode(record))


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@dataclass
class BatchRun:
    batch: dict[str, Any]
    output: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    storage: BatchStorage

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {
            line["custom_id"]: line
            for line in self.output + self.errors
            if line["custom_id"] is not None
        }

    def error_at(self, line: int) -> dict[str, Any]:
        return next(e for e in self.errors if e["error"] and e["error"]["line"] == line)


def result_key(storage: BatchStorage, file_id: str) -> str:
    """The storage key behind a batch's output_file_id or error_file_id (a file of the API)."""
    record = read_file_record(storage, file_id)
    assert record is not None, f"no file record for {file_id}"
    return record.content


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def run_batch(tmp_path: Path, engine: VLLMEngine, instance: dg.DagsterInstance):
    """Write ``content`` to a file, run it through the assets, return what the user gets."""

    def run(
        content: str | bytes,
        name: str = "batch.jsonl",
        run_config: dict | None = None,
        engine_override: VLLMEngine | None = None,
    ) -> BatchRun:
        file = tmp_path / "upload" / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(content.encode() if isinstance(content, str) else content)
        storage = BatchStorage(root=str(tmp_path / "storage"))
        batch = run_file(
            file, storage, engine_override or engine, instance=instance, run_config=run_config
        )
        paths = BatchPaths(batch["id"])
        root = Path(storage.uri)
        output = read_jsonl(root / paths.output) if storage.exists(paths.output) else []
        errors = read_jsonl(root / paths.errors) if storage.exists(paths.errors) else []
        return BatchRun(batch, output, errors, storage)

    return run


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 server (SeaweedFS) on loopback for the whole session, bucket `batches`."""
    from tests.seaweedfs import ACCESS_KEY, SECRET_KEY, seaweedfs

    saved = {
        k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1"
    )
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        server.create_bucket("batches")
        yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_storage(s3_server, request) -> BatchStorage:
    """A fresh prefix in the `batches` bucket."""
    prefix = request.node.name.replace("[", "-").replace("]", "")[:60]
    return BatchStorage(root=f"s3://batches/{prefix}", endpoint_url=s3_server.endpoint)
