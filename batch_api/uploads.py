"""Streaming a multipart upload straight into the storage: memory stays flat for any size.

The body is parsed as it arrives (python-multipart's push parser, the one Starlette uses);
the ``file`` part's bytes go to ``storage.open_write`` chunk by chunk, which publishes the
object only when it is whole. An upload over the limit, cut off mid-stream, or missing its
parts raises before that, so nothing is left behind.
"""

import re
from collections.abc import Callable
from contextlib import ExitStack
from typing import IO, TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

from batch_api.errors import APIError, bad_request
from resources.storage import BatchStorage

MAX_FIELD_BYTES = 64 << 10  # a non-file form field
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_filename(raw: str) -> str:
    """The name a person gave the file, without folders or control characters."""
    name = _CONTROL.sub("", raw).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload"


class UploadedForm:
    """What the form held: its text fields, and the file part's name and size."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0


class _FormReader:
    """python-multipart's callbacks for one body: the ``file`` part to the storage, the rest
    into ``form.fields``."""

    def __init__(self, stack: ExitStack, storage: BatchStorage, key: str, max_file_bytes: int):
        self.stack, self.storage, self.key, self.max_file_bytes = (
            stack,
            storage,
            key,
            max_file_bytes,
        )
        self.form = UploadedForm()
        self.writer: IO[bytes] | None = None
        self.ended = False
        self._name: str | None = None
        self._is_file = False
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()
        self._header_field = bytearray()
        self._header_value = bytearray()

    def callbacks(self) -> "MultipartCallbacks":
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._name, self._is_file, self._headers = None, False, {}
        self._value.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field.extend(data[start:end])

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value.extend(data[start:end])

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        if self._name != "file":
            return
        if self.writer is not None:
            raise bad_request("the form has more than one `file` part", "file")
        filename = params.get(b"filename", b"upload").decode("utf-8", "replace")
        self.form.filename = safe_filename(filename)
        self._is_file = True
        self.writer = self.stack.enter_context(self.storage.open_write(self.key))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file and self.writer is not None:
            self.form.size += end - start
            if self.form.size > self.max_file_bytes:
                raise APIError(
                    413,
                    f"the file is larger than this server accepts ({self.max_file_bytes} bytes)",
                    "file_too_large",
                    "file",
                )
            self.writer.write(data[start:end])
            return
        self._value.extend(data[start:end])
        if len(self._value) > MAX_FIELD_BYTES:
            raise bad_request(f"form field {self._name!r} is too long", None)

    def on_part_end(self) -> None:
        if not self._is_file and self._name:
            self.form.fields[self._name] = self._value.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.ended = True


def stream_upload(
    pull: Callable[[], bytes | None],
    content_type: str,
    storage: BatchStorage,
    key: str,
    max_file_bytes: int,
) -> UploadedForm:
    """Parse a multipart body, writing its ``file`` part to ``key``; the form's other fields.

    ``pull`` returns the body's next chunk, None at its end. This runs in a worker thread
    (the storage's writes block), pulling chunks from the event loop as it goes.
    """
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise bad_request("the body must be multipart/form-data with a `file` part", "file")
    with ExitStack() as stack:
        reader = _FormReader(stack, storage, key, max_file_bytes)
        parser = MultipartParser(boundary, reader.callbacks())
        while (chunk := pull()) is not None:
            parser.write(chunk)
        parser.finalize()
        if not reader.ended:
            raise bad_request("the upload was cut off before its end", "file", "incomplete_upload")
        if reader.writer is None:
            raise bad_request("the form has no `file` part", "file")
        purpose = reader.form.fields.get("purpose")
        if purpose is None:
            raise APIError(
                400, "purpose: a value is required", "missing_required_parameter", "purpose"
            )
        if purpose != "batch":
            raise bad_request(f"purpose {purpose!r} is not supported here; use 'batch'", "purpose")
    return reader.form
