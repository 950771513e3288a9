"""Faults mid-run on the real engine: the S3 server stops, the engine process dies.

Each ends in a clean, readable failure after bounded retries; the rerun (what run retries
do) resumes from the journal and the batch ends with every line exactly once.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from batch_assets.cli.runner import run_file
from batch_assets.lifecycle.batches import register_batch
from resources.journal import journaled_lines
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import (
    MAX_MODEL_LEN,
    MODEL_NAME,
    ROOT,
    chat_requests,
    read_jsonl,
    request_ids,
    wait_for,
)
from tests.seaweedfs import SeaweedFS

pytestmark = pytest.mark.slow
TOTAL = 2000
MAX_TOKENS = 128  # ~15 s of decoding on the tiny CPU engine: room to strike mid-run


def _upload(tmp_path: Path) -> Path:
    upload = tmp_path / "faults.jsonl"
    upload.write_text(chat_requests("f", TOTAL, max_tokens=MAX_TOKENS))
    return upload


def _assert_complete(storage: BatchStorage, batch_id: str) -> None:
    output = read_jsonl_from(storage, BatchPaths(batch_id).output)
    assert [line["custom_id"] for line in output] == request_ids("f", TOTAL)


def read_jsonl_from(storage: BatchStorage, key: str) -> list[dict]:
    local = storage.local_path(key)
    if local is not None:
        return read_jsonl(local)
    return [json.loads(raw) for raw in storage.read_bytes(key).decode().splitlines()]


def test_the_s3_server_stopping_mid_run_fails_cleanly_and_the_rerun_resumes(
    tmp_path,
    engine,
    instance,
    s3_server,  # s3_server: the test credentials in the environment
):
    server = SeaweedFS(tmp_path / "weed")  # a server of its own, to stop and restart
    server.start()
    try:
        server.create_bucket("outage")
        storage = BatchStorage(
            root="s3://outage/batches", endpoint_url=server.endpoint, max_attempts=3
        )
        upload = _upload(tmp_path)
        storage.put_file(upload, "inbox/faults.jsonl")
        batch_id = register_batch(storage, "inbox/faults.jsonl")
        journal = BatchPaths(batch_id).journal
        result: dict = {}
        worker = threading.Thread(
            target=lambda: result.update(run_file(upload, storage, engine, instance=instance))
        )
        worker.start()
        wait_for(lambda: any(storage.list(journal)), 300, "a journal part on S3")
        server.kill()
        stopped = time.monotonic()
        worker.join(timeout=300)
        assert not worker.is_alive()
        assert time.monotonic() - stopped < 120  # bounded retries, then a clean failure
        assert result["status"] == "failed"
        reason = result["errors"]["data"][0]["message"]
        assert "Could not connect" in reason or "Connect" in reason, reason

        server.start()
        kept = journaled_lines(storage, journal)
        assert 0 < len(kept) < TOTAL
        again = run_file(upload, storage, engine, instance=instance)
        assert again["status"] == "completed"
        _assert_complete(storage, batch_id)
        assert len(journaled_lines(storage, journal)) == TOTAL
    finally:
        server.stop()


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from batch_assets.cli.runner import run_file
    from resources.storage import BatchStorage
    from resources.engines.vllm_engine import VLLMEngine

    if __name__ == "__main__":
        engine = VLLMEngine(
            model=sys.argv[3], served_model_name="{model}", max_model_len={max_len},
            engine_in_process=False,
        )
        batch = run_file(Path(sys.argv[1]), BatchStorage(root=sys.argv[2]), engine)
        print("STATUS", batch["status"])
        print("REASON", (batch.get("errors") or {{}}).get("data", [{{}}])[0].get("message"))
    """
)


def test_the_engine_process_dying_mid_run_fails_cleanly_and_the_rerun_resumes(
    tmp_path, tiny_model, engine, instance
):
    upload, root = _upload(tmp_path), tmp_path / "data"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(model=MODEL_NAME, max_len=MAX_MODEL_LEN))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "VLLM_ENABLE_V1_MULTIPROCESSING")
    }
    run = subprocess.Popen(
        [sys.executable, str(driver), str(upload), str(root), str(tiny_model)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    journal = root / "work"

    def journaled() -> int:
        return sum(p.read_bytes().count(b"\n") for p in journal.glob("*/journal/*.tsv"))

    wait_for(lambda: journaled() >= 200 or run.poll() is not None, 600, "200 answers")
    cores = [
        p for p in psutil.Process(run.pid).children(recursive=True) if "EngineCore" in p.name()
    ]
    assert cores, "no engine process found"
    for core in cores:
        core.kill()  # what the OOM killer does
    out, _ = run.communicate(timeout=300)
    assert "STATUS failed" in out, out[-3000:]
    assert "the vLLM engine died mid-batch" in out, out[-3000:]

    storage = BatchStorage(root=str(root))
    batch_id = register_batch(storage, "inbox/faults.jsonl")
    kept = journaled_lines(storage, BatchPaths(batch_id).journal)
    assert 200 <= len(kept) < TOTAL
    again = run_file(upload, storage, engine, instance=instance)
    assert again["status"] == "completed"
    _assert_complete(storage, batch_id)
