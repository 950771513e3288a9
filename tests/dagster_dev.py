"""Start, stop and query `dagster dev` (webserver + daemon) for end-to-end tests."""

import http.client
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import dagster as dg

from resources.storage import BatchStorage
from tests.conftest import ROOT
from tests.seaweedfs import free_port, stop_process_group


class DagsterDev:
    """``dagster dev`` on loopback with the shipped instance config in ``home``.

    Started again on the same ``home`` it finds the same runs, cursors and storage.
    """

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        self.log = (home / "dagster-dev.log").open("ab")
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
            except (OSError, http.client.HTTPException):
                time.sleep(1)
        raise TimeoutError(self.tail())

    def tail(self) -> str:
        return (self.home / "dagster-dev.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        stop_process_group(self.process, timeout_s=30)
        self.log.close()

    def crash(self) -> None:
        """kill -9 the whole process tree: webserver, daemon, code servers, run workers."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def runs(self, job_name: str | None = "batch_job") -> list[dg.DagsterRun]:
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            return list(instance.get_runs(dg.RunsFilter(job_name=job_name)))


def wait_for_batches(
    storage: BatchStorage,
    dev: DagsterDev,
    count: int,
    timeout_s: float = 600,
    statuses: tuple[str, ...] = ("completed", "failed"),
) -> list[dict]:
    """The batch.json of ``count`` batches once they all reached one of ``statuses``.

    Waits for every run to end too: a run publishes batch.json before its last events, and
    stopping ``dagster dev`` in between would fail it.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batches = [
            storage.read_json(info.key)
            for info in storage.list("outbox")
            if info.key.endswith("/batch.json")
        ]
        finished = [b for b in batches if b["status"] in statuses]
        if len(finished) == count and all(run.is_finished for run in dev.runs(None)):
            return finished
        assert dev.process.poll() is None, dev.tail()
        assert "Error loading repository location" not in dev.tail(), dev.tail()
        time.sleep(2)
    raise TimeoutError(f"batches not finished; runs: {dev.runs()}\n{dev.tail()}")
