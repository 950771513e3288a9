"""Streaming a multipart upload straight into the storage: memory stays flat for any size.

The body is parsed as it arrives (python-multipart's push parser, the one Starlette uses);
the ``file`` part's bytes go to ``storage.open_write`` chunk by chunk, which publishes the
object only when it is whole. An upload over the limit, cut off mid-stream, or missing its
parts raises before that, so nothing is left behind.
"""

import re
from collections.abc import Callable
from contextlib import ExitStack
from typing import IO

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

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
    form = UploadedForm()
    with ExitStack() as stack:
        state: dict[str, object] = {"name": None, "is_file": False, "headers": {}}
        value = bytearray()
        writer: list[IO[bytes]] = []
        header_field = bytearray()
        header_value = bytearray()

        def on_part_begin() -> None:
            state.update(name=None, is_file=False, headers={})
            value.clear()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            header_field.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            header_value.extend(data[start:end])

        def on_header_end() -> None:
            headers = state["headers"]
            assert isinstance(headers, dict)
            headers[bytes(header_field).lower()] = bytes(header_value)
            header_field.clear()
            header_value.clear()

        def on_headers_finished() -> None:
            headers = state["headers"]
            assert isinstance(headers, dict)
            _, params = parse_options_header(headers.get(b"content-disposition", b""))
            name = params.get(b"name", b"").decode("utf-8", "replace")
            state["name"] = name
            if name == "file":
                if writer:
                    raise bad_request("the form has more than one `file` part", "file")
                filename = params.get(b"filename", b"upload").decode("utf-8", "replace")
                form.filename = safe_filename(filename)
                state["is_file"] = True
                writer.append(stack.enter_context(storage.open_write(key)))

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["is_file"]:
                form.size += end - start
                if form.size > max_file_bytes:
                    raise APIError(
                        413,
                        f"the file is larger than this server accepts ({max_file_bytes} bytes)",
                        "file_too_large",
                        "file",
                    )
                writer[0].write(data[start:end])
            else:
                value.extend(data[start:end])
                if len(value) > MAX_FIELD_BYTES:
                    raise bad_request(f"form field {state['name']!r} is too long", None)

        def on_end() -> None:
            state["ended"] = True

        def on_part_end() -> None:
            name = state["name"]
            if not state["is_file"] and isinstance(name, str) and name:
                form.fields[name] = value.decode("utf-8", "replace")

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_end": on_end,
            },
        )
        while (chunk := pull()) is not None:
            parser.write(chunk)
        parser.finalize()
        if not state.get("ended"):
            raise bad_request("the upload was cut off before its end", "file", "incomplete_upload")
        if not writer:
            raise bad_request("the form has no `file` part", "file")
        purpose = form.fields.get("purpose")
        if purpose is None:
            raise APIError(
                400, "purpose: a value is required", "missing_required_parameter", "purpose"
            )
        if purpose != "batch":
            raise bad_request(f"purpose {purpose!r} is not supported here; use 'batch'", "purpose")
    return form
