"""Open an uploaded file and read it line by line with bounded memory.

A gzip-compressed upload (``.jsonl.gz``, or gzip bytes under any name) is decompressed as it
is read; its decompressed size counts against ``max_file_bytes``, so a gzip bomb stops at
the limit instead of filling memory or disk. Problems with the file as a whole raise
:class:`FileRejected`, which fails the batch with a readable reason.
"""

import gzip
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Protocol

from resources.storage import BatchStorage

UTF8_BOM = b"\xef\xbb\xbf"
GZIP_MAGIC = b"\x1f\x8b"
# Magic numbers of common binary formats uploaded by mistake.
BINARY_MAGIC = (b"PK\x03\x04", b"%PDF", b"PAR1", b"\x89PNG", b"\xff\xd8\xff", b"BZh", b"\xfd7zXZ")


class FileRejected(Exception):
    """The file as a whole cannot be a batch; ``code`` and ``message`` go to batch.json."""

    def __init__(self, code: str, message: str, line: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.line = line


class LineSource(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class LineStream(LineSource, Protocol):
    """What the input stage reads: a buffered file, or a gzip stream over one."""

    def peek(self, size: int = 0, /) -> bytes: ...


class _Decompressed:
    """``readline``/``peek`` over a gzip stream, failing once it outgrows ``max_bytes``."""

    def __init__(self, compressed: IO[bytes], max_bytes: int):
        self._gzip = gzip.GzipFile(fileobj=compressed, mode="rb")
        self._max_bytes = max_bytes
        self._total = 0

    def _guard(self, read: Callable[[], bytes]) -> bytes:
        try:
            return read()
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise FileRejected("corrupt_gzip", f"the gzip data is corrupt: {exc}") from exc

    def peek(self, size: int = 0, /) -> bytes:
        return self._guard(lambda: self._gzip.peek(size))

    def readline(self, size: int = -1, /) -> bytes:
        data = self._guard(lambda: self._gzip.readline(size))
        self._total += len(data)
        if self._total > self._max_bytes:
            raise FileRejected(
                "file_too_large",
                f"the file decompresses to more than {self._max_bytes} bytes (max_file_bytes)",
            )
        return data


def _reject_binary(head: bytes) -> None:
    if head.startswith(BINARY_MAGIC):
        raise FileRejected("not_text", "the file is a binary or archive file, not JSONL text")
    sample = head[:8192]
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    if sample and control / len(sample) > 0.1:
        raise FileRejected(
            "not_text",
            "the file does not look like text "
            f"({control} control bytes in its first {len(sample)} bytes)",
        )


@contextmanager
def open_input(storage: BatchStorage, key: str, max_file_bytes: int) -> Iterator[LineStream]:
    """The upload at ``key`` as a line stream, decompressed if it is gzip."""
    size = storage.stat(key).size
    if size == 0:
        raise FileRejected("empty_file", "the file is empty")
    if size > max_file_bytes:
        raise FileRejected(
            "file_too_large",
            f"the file has {size} bytes; the limit is {max_file_bytes} (max_file_bytes)",
        )
    with storage.open_read(key) as raw:
        stream: LineStream = raw
        if raw.peek(2)[:2] == GZIP_MAGIC:
            stream = _Decompressed(raw, max_file_bytes)
        _reject_binary(stream.peek(8192)[:8192])
        yield stream


def iter_raw_lines(stream: LineSource, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_number, content)``; content is None for a line over ``max_line_bytes``.

    Handles a UTF-8 BOM, CRLF endings and a missing final newline. Never buffers more than
    ``max_line_bytes`` plus one read chunk.
    """
    number = 0
    while True:
        chunk = stream.readline(max_line_bytes + 2)
        if not chunk:
            return
        number += 1
        if number == 1 and chunk.startswith(UTF8_BOM):
            chunk = chunk[len(UTF8_BOM) :]
        if not chunk.endswith(b"\n") and len(chunk) >= max_line_bytes + 2:
            while (more := stream.readline(1 << 20)) and not more.endswith(b"\n"):
                pass
            yield number, None
            continue
        content = chunk.rstrip(b"\r\n")
        if len(content) > max_line_bytes:
            yield number, None
            continue
        yield number, content
