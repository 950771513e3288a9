"""Streaming a multipart upload straight into the storage: memory stays flat for any size.

The body is parsed as it arrives (python-multipart's push parser, the one Starlette uses);
the ``file`` part's bytes go to ``storage.open_write`` chunk by chunk, which publishes the
object only when it is whole. An upload over the limit, cut off mid-stream, or missing its
parts raises before that, so nothing is left behind.
"""

import re
import urllib.parse
from collections.abc import Callable
from contextlib import ExitStack
from typing import IO, TYPE_CHECKING

import msgspec
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

from batch_api.errors import APIError, bad_request
from batch_assets.lifecycle.files import FileStatus
from resources.storage import BatchStorage

MAX_FIELD_BYTES = 64 << 10  # a non-file form field
MAX_CHECKED_LINE = 4 << 20  # the input step's default line limit
FORM_FIELDS = frozenset({"purpose", "expires_after[anchor]", "expires_after[seconds]"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_filename(raw: str) -> str:
    """The name a person gave the file, without folders or control characters."""
    name = _CONTROL.sub("", raw).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload"


_EXTENDED_FILENAME = re.compile(rb"""filename\*\s*=\s*([^;]+)""", re.IGNORECASE)
# What browsers and httpx escape in a quoted filename (the HTML multipart encoding).
_FORM_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n", "%0d": "\r", "%0a": "\n"}


def part_filename(disposition: bytes, quoted: bytes | None) -> str | None:
    """The file part's name: RFC 5987's ``filename*=UTF-8''...`` where given (RFC 6266 prefers
    it), else ``filename="..."`` with the form encoding's escapes undone."""
    extended = _EXTENDED_FILENAME.search(disposition)
    if extended:
        charset, _, rest = extended.group(1).strip().strip(b'"').decode("latin-1").partition("'")
        _, _, value = rest.partition("'")
        try:
            return urllib.parse.unquote(value, encoding=charset or "utf-8", errors="strict")
        except (LookupError, UnicodeDecodeError):
            pass
    if quoted is None:
        return None
    return re.sub(
        "%2[2]|%0[DdAa]", lambda m: _FORM_ESCAPES[m.group(0)], quoted.decode("utf-8", "replace")
    )


class JsonlCheck:
    """Whether an upload's lines are JSON objects, checked as its bytes stream past.

    A file none of whose lines is a JSON object (or with no line at all) cannot be a batch's
    input; a file with some bad lines can (each becomes an error line of its batch).
    """

    def __init__(self, max_line_bytes: int = MAX_CHECKED_LINE):
        self.max_line_bytes = max_line_bytes
        self.number = 0  # lines read
        self.lines = 0  # non-blank lines
        self.bad = 0
        self.first_bad: str | None = None
        self._partial = bytearray()
        self._too_long = False

    def feed(self, data: bytes) -> None:
        *whole, rest = data.split(b"\n")
        for piece in whole:
            if self._too_long:
                self._line(None)
            else:
                self._partial += piece
                self._line(bytes(self._partial))
            self._partial.clear()
            self._too_long = False
        if not self._too_long:
            self._partial += rest
            if len(self._partial) > self.max_line_bytes:
                self._too_long = True
                self._partial.clear()

    def finish(self) -> tuple[FileStatus, str | None]:
        """The file's status and, if any line is bad, why."""
        if self._partial or self._too_long:
            self._line(None if self._too_long else bytes(self._partial))
        if self.lines == 0:
            return "error", "the file has no request lines"
        if self.bad == self.lines:
            return "error", f"none of the {self.lines} lines is a JSON object; {self.first_bad}"
        if self.bad:
            return "processed", (
                f"{self.bad} of {self.lines} lines are not JSON objects ({self.first_bad}); "
                "a batch answers each with an error line"
            )
        return "processed", None

    def _line(self, content: bytes | None) -> None:
        self.number += 1
        if content is not None and (not content or content.isspace()):
            return
        self.lines += 1
        if content is None:
            reason = f"longer than {self.max_line_bytes} bytes"
        else:
            try:
                if isinstance(msgspec.json.decode(content), dict):
                    return
                reason = "a JSON value that is not an object"
            except msgspec.DecodeError as error:
                reason = f"not valid JSON: {error}"
            except RecursionError:
                reason = "nested too deeply"
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = f"first: line {self.number}: {reason}"


class UploadedForm:
    """What the form held: its text fields, the file part's name and size, and its lines'
    check."""

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.size = 0
        self.check = JsonlCheck()


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
        disposition = self._headers.get(b"content-disposition", b"")
        filename = part_filename(disposition, params.get(b"filename"))
        self.form.filename = safe_filename(filename or "upload")
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
            self.form.check.feed(data[start:end])
            return
        self._value.extend(data[start:end])
        if len(self._value) > MAX_FIELD_BYTES:
            raise bad_request(f"form field {self._name!r} is too long", None)

    def on_part_end(self) -> None:
        if not self._is_file and self._name in FORM_FIELDS:  # others are ignored, as OpenAI
            if self._name in self.form.fields:  # which one would count is anyone's guess
                raise bad_request(f"form field {self._name!r} is given more than once", self._name)
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
        try:
            while (chunk := pull()) is not None:
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as error:
            raise bad_request(f"the multipart body is malformed: {error}", "file") from None
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
