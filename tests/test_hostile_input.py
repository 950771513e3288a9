"""A corpus of nasty files: none crashes a run, escapes the storage root or grows memory
without bound; each gets the per-line or per-file answer DESIGN.md describes."""

import gzip
import json
import os
import subprocess
import sys
import textwrap

import pytest

from batch_assets.input.validation import Limits, validate_input
from resources.engines.base import ServedNames
from resources.layout import BatchPaths
from resources.lines import FileRejected
from resources.storage import BatchStorage, ObjectInfo, UnsafeKeyError
from sensors.inbox import is_batch_upload
from tests.conftest import MODEL_NAME, ROOT, chat_body, request_line

NESTED = "[" * 100_000 + "]" * 100_000

# (line, what the line must become): a code of errors.jsonl, or "ok" for an answered request.
NASTY_LINES = [
    (f'{{"custom_id": "deep", "method": "POST", "body": {NESTED}}}', "invalid_json_line"),
    (
        request_line("deep-extra", chat_body(vendor=json.loads("[" * 500 + "]" * 500))),
        "ok",  # deep but within bounds: an unknown field, kept and ignored
    ),
    ('{"custom_id": "\\ud800", "method": "POST"}', "invalid_json_line"),  # lone surrogate
    (request_line("surrogate-prompt", chat_body("\ud800")), "invalid_json_line"),
    (b'{"custom_id": "bin\x00\x01\x02\xff"}', "invalid_utf8"),
    (b"\x00\x00\x00\x00", "invalid_json_line"),
    (request_line("../../etc/passwd", chat_body("path one")), "ok"),
    (request_line("/abs/olute\\win\\path", chat_body("path two")), "ok"),
    (request_line("ctrl\u0001\u001f\u007f\u202e\n", chat_body("control")), "ok"),
    (request_line("x" * 600, chat_body()), "invalid_request"),  # custom_id over 512 chars
    (request_line("huge-n", chat_body(n=100_000)), "400"),
    (request_line("huge-max-tokens", chat_body(max_tokens=10**30)), "400"),
    (request_line("nan", chat_body(temperature=float("nan"))), "invalid_json_line"),
    (request_line("dup", chat_body()), "ok"),
    *[(request_line("dup", chat_body()), "duplicate_custom_id")] * 3,
]


def _nasty_file() -> bytes:
    lines = [line if isinstance(line, bytes) else line.encode() for line, _ in NASTY_LINES]
    return b"\n".join(lines) + b"\n" + b"\n" * 1000  # and a run of blank lines


def test_every_nasty_line_gets_its_own_answer_and_nothing_leaves_the_root(run_batch, tmp_path):
    run = run_batch(_nasty_file())
    assert run.batch["status"] == "completed"
    results = sorted(run.output + run.errors, key=lambda r: (r["error"] or {}).get("line", 0))
    assert len(run.output) + len(run.errors) == len(NASTY_LINES)
    by_line: dict[int, dict] = {e["error"]["line"]: e for e in run.errors if e["error"]}
    answered = {r["custom_id"]: r for r in results if r["response"] is not None}
    for number, (line, expected) in enumerate(NASTY_LINES, start=1):
        if expected == "ok":
            cid = json.loads(line)["custom_id"]
            assert answered[cid]["response"]["status_code"] == 200, cid
        elif expected == "400":
            cid = json.loads(line)["custom_id"]
            assert answered[cid]["response"]["status_code"] == 400, cid
        else:
            assert by_line[number]["error"]["code"] == expected, (number, by_line.get(number))
    # custom_ids come back byte for byte, and no path was built from them
    for cid in ("../../etc/passwd", "/abs/olute\\win\\path", "ctrl\u0001\u001f\u007f\u202e\n"):
        assert answered[cid]["custom_id"] == cid
    everything = [p for p in tmp_path.rglob("*") if p.is_file()]
    outside = [p for p in everything if not p.is_relative_to(tmp_path / "storage")]
    assert [p.name for p in outside] == ["batch.jsonl"]  # the upload itself


def test_a_huge_n_is_refused_before_it_reaches_the_engine(run_batch):
    run = run_batch(request_line("n", chat_body(n=100_000)))
    body = run.errors[0]["response"]["body"]
    assert body["error"]["param"] == "n"


@pytest.mark.parametrize(
    "key",
    ["inbox/../outbox/x.jsonl", "inbox/./x.jsonl", "inbox//x.jsonl", "/inbox/x.jsonl"],
)
def test_the_inbox_sensor_skips_keys_that_could_leave_the_root(key):
    assert not is_batch_upload(ObjectInfo(key, 10, "v", 1))


def test_symlinks_in_a_local_inbox_are_never_followed(tmp_path):
    root = tmp_path / "root"
    (root / "inbox").mkdir(parents=True)
    outside = tmp_path / "outside.jsonl"
    outside.write_text(request_line("a", chat_body()))
    (root / "inbox" / "link.jsonl").symlink_to(outside)
    (root / "inbox" / "dir").symlink_to(tmp_path)
    storage = BatchStorage(root=str(root))
    assert list(storage.list("inbox")) == []
    with pytest.raises(UnsafeKeyError):
        storage.stat("inbox/link.jsonl")
    with pytest.raises(UnsafeKeyError):
        storage.read_bytes("inbox/dir/outside.jsonl")


def test_a_hundred_thousand_duplicate_custom_ids_keep_the_first(tmp_path):
    line = request_line("same", chat_body())
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/f.jsonl", ("\n".join([line] * 100_000) + "\n").encode())
    limits = Limits(1 << 20, 1_000_000, 1 << 30)
    report = validate_input(
        storage, "inbox/f.jsonl", BatchPaths("b"), ServedNames((MODEL_NAME,)), limits
    )
    assert (report.valid, report.invalid) == (1, 99_999)
    assert report.error_codes == {"duplicate_custom_id": 99_999}


# Each case writes a file and validates it in a fresh process that reports its peak memory.
MEMORY_CASES = {
    "one 200 MB line": "big.write(b'{\"custom_id\": \"' + b'x' * (200 << 20) + b'\"}\\n')",
    "a million blank lines": "big.write(b'\\n' * 1_000_000 + LINE)",
    "a gzip bomb": (
        "import gzip\n"
        "with gzip.GzipFile(fileobj=big, mode='wb', compresslevel=1) as z:\n"
        "    for _ in range(400): z.write(b' ' * (1 << 20) + b'\\n')"
    ),
    "a million bad lines": "big.write(b'{not json\\n' * 1_000_000)",
}
PROBE = textwrap.dedent(
    """
    import resource, sys
    from resources.layout import BatchPaths
    from batch_assets.input.validation import FileRejected, Limits, validate_input
    from resources.storage import BatchStorage
    LINE = {line!r}
    storage = BatchStorage(root=sys.argv[1])
    with storage.open_write("inbox/f.jsonl") as big:
        {write}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        report = validate_input(
            storage, "inbox/f.jsonl", BatchPaths("b"), {{"{model}"}},
            Limits(4 << 20, 2_000_000, 300 << 20),
        )
        outcome = f"valid={{report.valid}} invalid={{report.invalid}}"
    except FileRejected as rejected:
        outcome = rejected.code
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(outcome, grown // 1024)
    """
)


@pytest.mark.parametrize("case", sorted(MEMORY_CASES))
def test_nasty_files_are_validated_in_bounded_memory(tmp_path, case):
    line = (request_line("ok", chat_body()) + "\n").encode()
    code = PROBE.format(
        line=line, write=MEMORY_CASES[case].replace("\n", "\n    "), model=MODEL_NAME
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "POLARS_MAX_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    *outcome, grown_mb = done.stdout.split()
    expected = {
        "one 200 MB line": "no_valid_lines",  # the line is line_too_long, so nothing is valid
        "a million blank lines": "valid=1 invalid=0",
        "a gzip bomb": "file_too_large",
        "a million bad lines": "no_valid_lines",
    }[case]
    assert " ".join(outcome) == expected, done.stdout
    assert int(grown_mb) < 64, f"{case}: peak memory grew by {grown_mb} MB"


def test_a_file_rejected_as_a_whole_says_why(tmp_path):
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/f.jsonl", gzip.compress(b"\x00\x01\x02\x03" * 5000))
    limits = Limits(1 << 20, 1_000, 1 << 30)
    with pytest.raises(FileRejected) as rejected:
        validate_input(
            storage, "inbox/f.jsonl", BatchPaths("b"), ServedNames((MODEL_NAME,)), limits
        )
    assert rejected.value.code == "not_text"
