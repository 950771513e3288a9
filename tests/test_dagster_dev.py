"""End to end under `dagster dev` (webserver + daemon) with the shipped instance config:
an upload to the inbox is picked up by the sensor, run once, and published; the UI renders
the asset graph."""

import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg
import openai.types as oa
import pytest

from resources.storage import BatchStorage
from tests.conftest import MODEL_NAME, ROOT, chat_body, request_line
from tests.seaweedfs import free_port, stop_process_group

pytestmark = pytest.mark.slow


class DagsterDev:
    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        self.log = (home / "dagster-dev.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "dagster"),
                "dev",
                "-w",
                str(ROOT / "workspace.yaml"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            cwd=ROOT,
            env={**os.environ, **env, "DAGSTER_HOME": str(home)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.tail()
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2):
                    return
            except OSError:
                time.sleep(1)
        raise TimeoutError(self.tail())

    def tail(self) -> str:
        return (self.home / "dagster-dev.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process_group(self.process, timeout_s=30)
        self.log.close()

    def runs(self) -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return list(instance.get_runs(dg.RunsFilter(job_name="batch_job")))


def _wait_for_completed(
    storage: BatchStorage, dev: DagsterDev, count: int, timeout_s: float = 600
) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batches = [
            storage.read_json(info.key)
            for info in storage.list("outbox")
            if info.key.endswith("/batch.json")
        ]
        finished = [b for b in batches if b["status"] in ("completed", "failed")]
        if len(finished) == count:
            return finished
        assert dev.process.poll() is None, dev.tail()
        assert "Error loading repository location" not in dev.tail(), dev.tail()
        time.sleep(2)
    raise TimeoutError(f"batches not finished; runs: {dev.runs()}\n{dev.tail()}")


def _run_uploads(
    storage: BatchStorage, env: dict[str, str], home: Path, uploads: int
) -> DagsterDev:
    dev = DagsterDev(
        home,
        {
            "BATCH_STORAGE": storage.root,
            "BATCH_MODEL": str(ROOT / "models" / "tiny-chat"),
            "BATCH_SERVED_MODEL_NAME": MODEL_NAME,
            **env,
        },
    )
    try:
        dev.wait_ready()
        for n in range(uploads):
            content = (
                "\n".join(
                    [request_line(f"e2e-{i}", chat_body(f"river {n} {i}")) for i in range(12)]
                    + ["{broken"]
                )
                + "\n"
            )
            storage.write_bytes(f"inbox/e2e-{n}.jsonl", content.encode())
        batches = _wait_for_completed(storage, dev, uploads)
        for batch in batches:
            oa.Batch.model_validate(batch)
            assert batch["status"] == "completed", json.dumps(batch)
            assert batch["request_counts"] == {"total": 13, "completed": 12, "failed": 1}
            output = storage.read_bytes(batch["output_file_id"]).decode().splitlines()
            assert len(output) == 12
        time.sleep(25)  # two more sensor ticks: the same uploads must not run again
        runs = dev.runs()
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(b["id"] for b in batches)
        return dev
    except BaseException:
        dev.stop()
        raise


def test_uploads_to_a_local_inbox_run_once_one_at_a_time_and_the_ui_renders(tiny_model, tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    dev = _run_uploads(storage, {}, tmp_path / "home", uploads=3)
    try:
        # One GPU pool slot (the shipped dagster.yaml): the three runs never overlapped.
        with dg.DagsterInstance.from_config(str(dev.home)) as instance:
            records = instance.get_run_records(dg.RunsFilter(job_name="batch_job"))
        spans = sorted((r.start_time, r.end_time) for r in records)
        assert len(spans) == 3
        assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None and not os.environ.get("CI"):
            pytest.skip("chromium is not installed (.ci/run installs it)")
        assert chromium, "chromium is missing"
        dom = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--virtual-time-budget=20000",
                "--dump-dom",
                f"{dev.url}/asset-groups/batch",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        for asset in ("batch_input", "batch_inference", "batch_results"):
            assert asset in dom, dom[-2000:]
    finally:
        dev.stop()


def test_an_upload_to_an_s3_inbox_runs_once(tiny_model, s3_server, tmp_path):
    storage = BatchStorage(root="s3://batches/e2e", endpoint_url=s3_server.endpoint)
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint}
    _run_uploads(storage, env, tmp_path / "home", uploads=1).stop()
