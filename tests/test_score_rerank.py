"""/v1/score and /v1/rerank lines: vLLM's own run-batch test inputs, answered as `vllm run-batch`
answers them on the same model (the tiny model as a pooling model: cosine of embeddings)."""

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, read_jsonl

pytestmark = pytest.mark.slow

_DOCUMENTS = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
_QUERY = "What is the capital of France?"
# vLLM's tests/entrypoints/openai/test_run_batch.py inputs (INPUT_SCORE_BATCH and
# INPUT_RERANK_BATCH), with this model's name; its rerank input repeats the custom_id
# "request-2", which a batch here refuses (OpenAI's rule), so the third is "request-3".
SCORE_LINES = [
    ("request-1", "/score", {"queries": _QUERY, "documents": _DOCUMENTS}),
    ("request-2", "/v1/score", {"queries": _QUERY, "documents": _DOCUMENTS}),
]
RERANK_LINES = [
    ("request-1", "/rerank", {"query": _QUERY, "documents": _DOCUMENTS}),
    ("request-2", "/v1/rerank", {"query": _QUERY, "documents": _DOCUMENTS}),
    ("request-3", "/v2/rerank", {"query": _QUERY, "documents": _DOCUMENTS, "top_n": 1}),
]


def _content(lines: list[tuple[str, str, dict]]) -> str:
    return "".join(
        json.dumps(
            {"custom_id": cid, "method": "POST", "url": url, "body": {"model": MODEL_NAME, **body}}
        )
        + "\n"
        for cid, url, body in lines
    )


def _vllm_run_batch(content: str, tiny_model, tmp_path) -> dict[str, dict]:
    infile, outfile = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    infile.write_text(content)
    command = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.run_batch"),
        *("-i", str(infile), "-o", str(outfile), "--model", str(tiny_model)),
        *("--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN)),
        *("--runner", "pooling", "--enforce-eager", "--seed", "0"),
    ]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    subprocess.run(command, check=True, env=env, cwd=tmp_path, timeout=600)
    return {line["custom_id"]: line for line in read_jsonl(outfile)}


@pytest.mark.parametrize(("lines", "kind"), [(SCORE_LINES, "score"), (RERANK_LINES, "rerank")])
def test_score_and_rerank_lines_answer_as_vllm_run_batch(
    run_batch, instance, tiny_model, tmp_path, lines, kind
):
    content = _content(lines)
    ours = run_batch(content)
    # The run itself succeeded, not just the batch (the results step's preview reads the bodies).
    (latest,) = instance.get_run_records(limit=1)
    assert latest.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    theirs = _vllm_run_batch(content, tiny_model, tmp_path)
    assert ours.errors == [] and len(ours.output) == len(lines)
    assert ours.batch["endpoint"] == f"/v1/{kind}"
    for line in ours.output:
        mine, reference = line["response"]["body"], theirs[line["custom_id"]]["response"]["body"]
        assert line["response"]["status_code"] == 200
        assert mine["model"] == reference["model"] == MODEL_NAME
        assert mine["usage"] == reference["usage"]
        if kind == "score":
            assert [d["index"] for d in mine["data"]] == [d["index"] for d in reference["data"]]
            assert [d["score"] for d in mine["data"]] == pytest.approx(
                [d["score"] for d in reference["data"]], abs=1e-5
            )
        else:
            assert [r["index"] for r in mine["results"]] == [
                r["index"] for r in reference["results"]
            ]
            assert [r["document"] for r in mine["results"]] == [
                r["document"] for r in reference["results"]
            ]
            assert [r["relevance_score"] for r in mine["results"]] == pytest.approx(
                [r["relevance_score"] for r in reference["results"]], abs=1e-5
            )
    if kind == "rerank":  # top_n keeps the best document only
        assert len(ours.by_id()["request-3"]["response"]["body"]["results"]) == 1


def test_a_bad_score_line_is_an_error_line_and_the_rest_is_answered(run_batch):
    lines = [
        ("ok", "/v1/score", {"queries": _QUERY, "documents": _DOCUMENTS}),
        ("no-documents", "/v1/score", {"queries": _QUERY}),
        ("empty-documents", "/v1/score", {"queries": _QUERY, "documents": []}),
        ("rerank-in-a-score-batch", "/v1/rerank", {"query": _QUERY, "documents": _DOCUMENTS}),
    ]
    run = run_batch(_content(lines))
    assert [line["custom_id"] for line in run.output] == ["ok"]
    errors = run.by_id()
    assert errors["no-documents"]["error"]["code"] == "invalid_body"
    assert errors["rerank-in-a-score-batch"]["error"]["code"] == "url_mismatch"
    empty = errors["empty-documents"]
    assert empty["response"]["status_code"] == 400
    assert empty["response"]["body"]["error"]["message"]
