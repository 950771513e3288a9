"""The API against its own OpenAPI document: a property-based fuzzer (schemathesis) drives
``batch-infer serve`` over every route with a valid key, its stateful phase included, and
every check must pass: no server error, only documented status codes and bodies, schema-valid
requests accepted, schema-violating ones refused."""

import subprocess
from pathlib import Path

import httpx
import pytest

from resources.storage import BatchStorage
from tests.api_server import api_server

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-fuzz"


@pytest.mark.slow
def test_the_openapi_document_describes_what_the_api_answers(tmp_path):
    storage = BatchStorage(root=str(tmp_path / "storage"))
    with api_server(storage, keys=KEY) as base_url:
        document = httpx.get(f"{base_url.removesuffix('/v1')}/openapi.json").json()
        upload = document["paths"]["/v1/files"]["post"]
        assert "multipart/form-data" in upload["requestBody"]["content"]
        assert {"400", "401", "413"} <= set(upload["responses"])
        assert set(document["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
        parameters = {
            p["name"]
            for ops in document["paths"].values()
            for op in ops.values()
            for p in op.get("parameters", [])
        }
        assert not parameters & {"authorization", "x-api-key", "openai-project", "x-project-id"}
        command = [
            str(ROOT / ".venv" / "bin" / "st"),
            "run",
            f"{base_url.removesuffix('/v1')}/openapi.json",
        ]
        command += ["-H", f"Authorization: Bearer {KEY}", "--checks", "all", "--seed", "1"]
        command += ["--max-examples", "15", "--max-time", "60", "--no-color"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "✅ Stateful" in done.stdout and "Tested: 9" in done.stdout, done.stdout[-3000:]
