"""The input stage on its own: line handling, per-line errors and per-file failures."""

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest

from batch_assets.input.shards import SeenIds, iter_line_errors, iter_requests
from batch_assets.input.validation import FileRejected, Limits, validate_input
from resources.engines.base import ServedNames
from resources.layout import BatchPaths
from resources.lines import iter_raw_lines
from resources.storage import BatchStorage
from tests.conftest import MODEL_NAME, chat_body, request_line

LIMITS = Limits(max_line_bytes=2048, max_lines=100, max_file_bytes=1 << 20, shard_rows=3)


def _validate(tmp_path: Path, content: bytes, limits: Limits = LIMITS):
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/f.jsonl", content)
    paths = BatchPaths("batch_test")
    report = validate_input(storage, "inbox/f.jsonl", paths, ServedNames((MODEL_NAME,)), limits)
    errors = {
        line: {"line": line, "custom_id": custom_id, "code": code, "message": message}
        for line, custom_id, code, message in iter_line_errors(storage, report.error_parts)
    }
    columns = ["line", "custom_id", "body"]
    rows = [
        dict(zip(columns, row, strict=True))
        for row in iter_requests(storage, report.shards, columns, input_order=True)
    ]
    return report, errors, rows


def test_line_reader_tolerates_bom_crlf_blank_lines_and_no_final_newline():
    data = b'\xef\xbb\xbf{"a":1}\r\n\r\n  \n{"b":2}\n{"c":3}'
    assert list(iter_raw_lines(io.BytesIO(data), 100)) == [
        (1, b'{"a":1}'),
        (2, b""),
        (3, b"  "),
        (4, b'{"b":2}'),
        (5, b'{"c":3}'),
    ]


def test_line_reader_skips_an_overlong_line_without_buffering_it():
    data = b"x" * 5000 + b"\n" + b'{"ok":1}\n' + b"y" * 101
    assert list(iter_raw_lines(io.BytesIO(data), 100)) == [(1, None), (2, b'{"ok":1}'), (3, None)]


def test_valid_requests_are_sharded_with_their_line_numbers(tmp_path):
    lines = [request_line(f"r{i}", chat_body(f"hello {i}")) for i in range(7)]
    content = ("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n").encode()
    report, errors, rows = _validate(tmp_path, content)
    assert (report.valid, report.invalid, report.blank_lines) == (7, 0, 1)
    assert len(report.shards) == 3  # 3 + 3 + 1 rows
    assert [r["line"] for r in rows] == [1, 2, 3, 5, 6, 7, 8]
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(7)]
    assert json.loads(rows[0]["body"]) == chat_body("hello 0")
    assert report.endpoint == "/v1/chat/completions"
    assert errors == {}


BAD_LINES = {
    "malformed JSON": ('{"custom_id": "a", ', "invalid_json_line"),
    "JSON array": ("[1, 2, 3]", "invalid_json_line"),
    "JSON string": ('"just a string"', "invalid_json_line"),
    "deeply nested": ("[" * 2000 + "]" * 2000, "invalid_json_line"),
    "missing custom_id": (
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": chat_body()}),
        "invalid_request",
    ),
    "numeric custom_id": (
        json.dumps(
            {"custom_id": 7, "method": "POST", "url": "/v1/chat/completions", "body": chat_body()}
        ),
        "invalid_request",
    ),
    "GET method": (request_line("m", chat_body(), method="GET"), "invalid_method"),
    "unsupported url": (request_line("u", chat_body(), url="/v1/audio/speech"), "invalid_url"),
    "a Responses line in a chat batch": (
        request_line("r", {"model": MODEL_NAME, "input": "x"}, url="/v1/responses"),
        "url_mismatch",
    ),
    "other endpoint": (
        request_line("e", {"model": MODEL_NAME, "input": "x"}, url="/v1/embeddings"),
        "url_mismatch",
    ),
    "body without messages": (request_line("b", {"model": MODEL_NAME}), "invalid_body"),
    "messages not a list": (
        request_line("b2", {"model": MODEL_NAME, "messages": "hi"}),
        "invalid_body",
    ),
    "stream true": (request_line("s", chat_body(stream=True)), "invalid_body"),
    "unknown model": (request_line("x", chat_body(model="gpt-4o")), "model_not_found"),
    "invalid UTF-8": (b'{"custom_id": "\xff\xfe"}', "invalid_utf8"),
    "NUL byte": (b'{"custom_id": "a\x00b"}', "invalid_json_line"),
    "line over the limit": (request_line("big", chat_body("x" * 4000)), "line_too_long"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_each_bad_line_becomes_an_error_row_and_the_rest_goes_on(tmp_path, case):
    bad, code = BAD_LINES[case]
    bad = bad if isinstance(bad, bytes) else bad.encode()
    good = [request_line(f"ok{i}", chat_body()).encode() for i in range(2)]
    limits = Limits(4096, 100, 1 << 22, 10)
    report, errors, rows = _validate(
        tmp_path, good[0] + b"\n" + bad + b"\n" + good[1] + b"\n", limits
    )
    assert [r["custom_id"] for r in rows] == ["ok0", "ok1"]
    assert list(errors) == [2]
    assert errors[2]["code"] == code
    assert errors[2]["message"]
    assert report.valid == 2 and report.invalid == 1


def test_a_responses_line_without_input_is_an_invalid_body(tmp_path):
    good = request_line("ok", {"model": MODEL_NAME, "input": "hi"}, url="/v1/responses")
    bad = request_line("bad", {"model": MODEL_NAME, "input": []}, url="/v1/responses")
    report, errors, rows = _validate(tmp_path, (good + "\n" + bad + "\n").encode())
    assert [r["custom_id"] for r in rows] == ["ok"]
    assert errors[2]["code"] == "invalid_body" and "`input` is required" in errors[2]["message"]
    assert report.endpoint == "/v1/responses"


def test_duplicate_custom_id_keeps_the_first_occurrence(tmp_path):
    content = "\n".join(
        [
            request_line("same", chat_body("first")),
            request_line("other", chat_body()),
            request_line("same", chat_body("second")),
        ]
    ).encode()
    _, errors, rows = _validate(tmp_path, content)
    assert [(r["line"], r["custom_id"]) for r in rows] == [(1, "same"), (2, "other")]
    assert errors[3]["code"] == "duplicate_custom_id"
    assert errors[3]["custom_id"] == "same"


def test_unknown_fields_are_tolerated_and_kept(tmp_path):
    body = chat_body(some_vendor_field={"x": 1})
    content = request_line("a", body, extra_envelope_field=True).encode()
    _, errors, rows = _validate(tmp_path, content)
    assert errors == {}
    assert json.loads(rows[0]["body"])["some_vendor_field"] == {"x": 1}


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "empty_file"),
        (b"\n\n   \r\n\n", "empty_file"),
        (b"PK\x03\x04" + bytes(100), "not_text"),
        (bytes(range(256)) * 40, "not_text"),
        (gzip.compress(bytes(range(256)) * 40), "not_text"),
        (gzip.compress(b"\n" * ((1 << 20) + 1)), "file_too_large"),  # a (small) gzip bomb
        (gzip.compress(b'{"a": 1}\n' * 1000)[:-40], "corrupt_gzip"),
        (b"not json\n[1]\n", "no_valid_lines"),
        (
            "\n".join(request_line(f"r{i}", chat_body()) for i in range(101)).encode(),
            "too_many_tasks",
        ),
        (b"x" * ((1 << 20) + 1), "file_too_large"),
    ],
    ids=[
        "empty",
        "only-blank",
        "zip",
        "binary",
        "gzip-binary",
        "gzip-bomb",
        "gzip-truncated",
        "no-valid-line",
        "too-many-lines",
        "too-large",
    ],
)
def test_file_level_problems_reject_the_file_with_a_reason(tmp_path, content, code):
    with pytest.raises(FileRejected) as rejected:
        _validate(tmp_path, content)
    assert rejected.value.code == code
    assert rejected.value.message


def test_a_gzip_upload_is_read_as_its_decompressed_lines(tmp_path):
    lines = [request_line(f"r{i}", chat_body(f"hello {i}")) for i in range(5)]
    content = gzip.compress(("\n".join(lines) + "\n").encode())
    report, _, rows = _validate(tmp_path, content)
    assert (report.valid, report.invalid) == (5, 0)
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(5)]


def test_duplicates_are_caught_across_chunks_and_the_first_occurrence_runs(tmp_path):
    ids = ["a", "b", "c", "d", "a", "e", "b", "f", "a", "g"]  # chunks of 3 lines
    content = "\n".join(request_line(cid, chat_body(f"n{n}")) for n, cid in enumerate(ids))
    report, errors, rows = _validate(tmp_path, content.encode())
    assert [(r["line"], r["custom_id"]) for r in rows] == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
        (4, "d"),
        (6, "e"),
        (8, "f"),
        (10, "g"),
    ]
    assert {line: e["code"] for line, e in errors.items()} == {
        5: "duplicate_custom_id",
        7: "duplicate_custom_id",
        9: "duplicate_custom_id",
    }
    assert (report.valid, report.invalid) == (7, 3)


def test_seen_ids_scan_digests_whose_first_halves_collide():
    seen = SeenIds()
    seen.add(np.array([[1, 2], [5, 6], [1, 3]], dtype=np.uint64))
    queries = np.array([[1, 3], [1, 4], [5, 6], [0, 0], [1, 2]], dtype=np.uint64)
    assert seen.contains(queries).tolist() == [True, False, True, False, True]


def test_requests_sharing_a_prefix_run_together_and_results_keep_input_order(tmp_path):
    systems = ["You are a pirate.", "You are a poet.", "You are a lawyer."]
    lines = [
        request_line(
            f"r{i}",
            chat_body(
                messages=[
                    {"role": "system", "content": systems[i % 3]},
                    {"role": "user", "content": f"question {i}"},
                ]
            ),
        )
        for i in range(9)
    ]
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/f.jsonl", "\n".join(lines).encode())
    limits = Limits(4096, 100, 1 << 20, shard_rows=100)
    report = validate_input(
        storage, "inbox/f.jsonl", BatchPaths("b"), ServedNames((MODEL_NAME,)), limits
    )
    columns = ["line", "custom_id"]
    engine_order = [cid for _, cid in iter_requests(storage, report.shards, columns, False)]
    groups = [systems[int(cid[1:]) % 3] for cid in engine_order]
    assert groups == sorted(groups)  # one run per system prompt
    input_order = [cid for _, cid in iter_requests(storage, report.shards, columns, True)]
    assert input_order == [f"r{i}" for i in range(9)]
