"""Greedy answers equal what `python -m vllm.entrypoints.openai.run_batch` gives."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MAX_MODEL_LEN, MODEL_NAME, read_jsonl, request_line

WORDS = "the night queue green river seven blue stones hello world explain why list".split()


def _requests() -> list[str]:
    lines = []
    for i in range(40):
        words = " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 3 + i % 9))
        if i % 4 == 0:
            messages = [
                {"role": "system", "content": "please summarize"},
                {"role": "user", "content": words},
            ]
        elif i % 4 == 1:
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": words}, {"type": "text", "text": "why"}],
                }
            ]
        elif i % 4 == 2:
            messages = [
                {"role": "user", "content": words},
                {"role": "assistant", "content": "one two"},
                {"role": "user", "content": f"and {words}\u0000?"},
            ]
        else:
            messages = [{"role": "user", "content": f"{words} ünïcødé ✓"}]
        body = {
            "model": MODEL_NAME,
            "messages": messages,
            "max_tokens": 4 + i % 13,
            "temperature": 0,
        }
        lines.append(request_line(f"req-{i}", body))
    return lines


@pytest.mark.slow
def test_greedy_text_equals_vllm_run_batch(run_batch, tiny_model, tmp_path):
    content = "\n".join(_requests()) + "\n"
    ours = run_batch(content)
    assert len(ours.output) == 40

    infile, outfile = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    infile.write_text(content)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.run_batch",
            "-i",
            str(infile),
            "-o",
            str(outfile),
            "--model",
            str(tiny_model),
            "--served-model-name",
            MODEL_NAME,
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--enforce-eager",
            "--seed",
            "0",
        ],
        check=True,
        env=env,
        cwd=Path(__file__).parent,
        timeout=600,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    theirs = {line["custom_id"]: line["response"]["body"] for line in read_jsonl(outfile)}
    assert len(theirs) == 40
    compared = 0
    for line in ours.output:
        mine = line["response"]["body"]
        other = theirs[line["custom_id"]]
        assert (
            mine["choices"][0]["message"]["content"] == (other["choices"][0]["message"]["content"])
        ), line["custom_id"]
        assert mine["choices"][0]["finish_reason"] == other["choices"][0]["finish_reason"]
        assert mine["usage"]["prompt_tokens"] == other["usage"]["prompt_tokens"]
        assert mine["usage"]["completion_tokens"] == other["usage"]["completion_tokens"]
        compared += 1
    assert compared == 40
    assert (
        sum(
            1
            for line in ours.output
            if line["response"]["body"]["choices"][0]["message"]["content"]
        )
        >= 30
    )
