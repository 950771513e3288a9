"""End to end under `dagster dev` (webserver + daemon) with the shipped instance config:
an upload to the inbox is picked up by the sensor, run once, and published; the UI renders
the asset graph."""

import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import openai
import openai.types as oa
import pytest

from resources.storage import BatchStorage
from tests.conftest import MODEL_NAME, ROOT, chat_body, request_line, result_key, wait_for
from tests.dagster_dev import DagsterDev, wait_for_batches
from tests.webhook_receiver import Receiver, new_secret

pytestmark = pytest.mark.slow


CANARY = "ZQXJ-canary-prompt-8842"  # a prompt no tiny-model answer can contain


def _env(storage: BatchStorage, env: dict[str, str]) -> dict[str, str]:
    return {
        "BATCH_STORAGE": storage.root,
        "BATCH_MODEL": str(ROOT / "models" / "tiny-chat"),
        "BATCH_SERVED_MODEL_NAME": MODEL_NAME,
        **env,
    }


def _run_uploads(
    storage: BatchStorage, env: dict[str, str], home: Path, uploads: int
) -> DagsterDev:
    dev = DagsterDev(home, _env(storage, env))
    try:
        dev.wait_ready()
        for n in range(uploads):
            content = (
                "\n".join(
                    [
                        request_line(f"e2e-{i}", chat_body(f"{CANARY} river {n} {i}"))
                        for i in range(12)
                    ]
                    + ["{broken"]
                )
                + "\n"
            )
            storage.write_bytes(f"inbox/e2e-{n}.jsonl", content.encode())
        batches = wait_for_batches(storage, dev, uploads)
        for batch in batches:
            oa.Batch.model_validate(batch)
            assert batch["status"] == "completed", json.dumps(batch)
            assert batch["request_counts"] == {"total": 13, "completed": 12, "failed": 1}
            output_key = result_key(storage, batch["output_file_id"])
            output = storage.read_bytes(output_key).decode().splitlines()
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
    hook, secret = Receiver(then=503), new_secret()  # the endpoint is down at first
    hooks = {"BATCH_WEBHOOKS": hook.url, "BATCH_WEBHOOK_SECRETS": secret}
    dev = _run_uploads(storage, hooks, tmp_path / "home", uploads=3)
    try:
        # kill -9 the whole dagster dev between the publish and the delivery of the batches'
        # events: started again, it delivers each once, with the id of its failed attempts.
        def failed_ids() -> set[str]:
            return {r.headers["webhook-id"] for r in hook.received}

        wait_for(lambda: len(failed_ids()) == 3, 120, "an attempt at each event")
        assert not hook.delivered
        dev.crash()
        hook.then = 200
        dev = DagsterDev(dev.home, _env(storage, hooks))
        dev.wait_ready()
        # An event's next attempt may be a minute or more away (its back-off grew while the
        # endpoint was down): a wide margin.
        wait_for(lambda: len(hook.delivered) == 3, 300, "three delivered events")
        sdk = openai.OpenAI(api_key="unused", webhook_secret=secret)
        events = [sdk.webhooks.unwrap(r.body, r.headers) for r in hook.delivered]
        assert {e.id for e in events} == failed_ids()
        assert {e.data.id for e in events} == {r.tags["dagster/partition"] for r in dev.runs()}
        assert {e.type for e in events} == {"batch.completed"}
        # One batch/gpu run at a time (the shipped dagster.yaml): the three never overlapped.
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
        hook.close()


def test_an_upload_to_an_s3_inbox_runs_once_and_leaks_no_secret(tiny_model, s3_server, tmp_path):
    storage = BatchStorage(root="s3://batches/e2e", endpoint_url=s3_server.endpoint)
    env = {"AWS_ENDPOINT_URL": s3_server.endpoint}
    home = tmp_path / "home"
    _run_uploads(storage, env, home, uploads=1).stop()
    # Neither the credentials nor the prompt text reach Dagster's logs, event log, run
    # config or compute logs; the credentials reach no stored object either.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    for path in (p for p in home.rglob("*") if p.is_file()):
        data = path.read_bytes()
        assert secret not in data, path
        assert CANARY.encode() not in data, path
    for prefix in ("outbox", "work", "inbox"):
        for info in storage.list(prefix):
            assert secret not in storage.read_bytes(info.key), info.key
