"""The Node SDK (the official ``openai`` npm package, ``tests/node``) as a client of the API:
upload from a stream and from ``toFile``, wait for processing, create, poll, download,
``for await`` pagination, cancel, delete, and its error classes for each refusal."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from resources.storage import BatchStorage
from tests.api_server import api_server
from tests.conftest import chat_requests, request_ids

NODE_DIR = Path(__file__).resolve().parent / "node"
KEY = "sk-node"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed on this machine")
@pytest.mark.skipif(
    not (NODE_DIR / "node_modules" / "openai").is_dir(),
    reason="the openai npm package is not installed (npm ci --prefix tests/node)",
)
def test_the_node_sdk_runs_the_documented_flow(tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    requests = tmp_path / "requests.jsonl"
    requests.write_text(chat_requests("n", 3))
    with api_server(storage, keys=KEY) as base_url:
        done = subprocess.run(
            ["node", str(NODE_DIR / "client.mjs"), base_url, KEY, str(requests)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=NODE_DIR,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout)
    (streamed, made) = seen["uploads"]
    assert streamed["filename"] == "requests.jsonl" and made["filename"] == "to-file.jsonl"
    assert streamed["bytes"] == made["bytes"] == len(requests.read_bytes())
    assert seen["waited"] == "processed"
    assert seen["created"]["status"] == "validating"
    assert seen["created"]["metadata"] == {"from": "node"}
    assert seen["polled"] == "validating"
    assert [json.loads(line)["custom_id"] for line in seen["content"].splitlines()] == (
        request_ids("n", 3)
    )
    assert seen["listed"] == [made["id"], streamed["id"]]  # newest first, one a page
    assert seen["batches"] == [seen["created"]["id"]]
    assert seen["cancelled"] == "cancelling"
    assert seen["in_use"]["classes"] == ["APIError", "ConflictError"]  # not validated yet
    assert seen["deleted"] is True
    assert seen["gone"]["classes"] == ["APIError", "NotFoundError"]
    assert seen["bad_endpoint"]["classes"] == ["APIError", "BadRequestError"]
    assert seen["bad_endpoint"]["param"] == "endpoint"
    assert seen["wrong_key"]["classes"] == ["APIError", "AuthenticationError"]
