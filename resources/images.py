"""Images in chat lines: what a line's ``image_url`` may be, and how a URL is fetched.

A line carries an image as OpenAI's batch lines do, in an ``image_url`` content part: a
``data:`` URI of a base64 PNG, JPEG or WebP, or (only where the operator sets
``BATCH_ALLOW_IMAGE_URLS``) an ``http(s)://`` URL. Validation checks each reference without
decoding it (:func:`image_problem`: the scheme, the media type, the size the base64 gives);
the image is decoded, and a URL fetched (:func:`fetch_image`), only when its request is
prepared for the engine, so a file of many images never holds more than the engine's window
of them in memory.
"""

import base64
import os
import urllib.error
import urllib.request
from dataclasses import dataclass

ALLOW_URLS_ENV = "BATCH_ALLOW_IMAGE_URLS"
MAX_BYTES_ENV = "BATCH_MAX_IMAGE_BYTES"
DEFAULT_MAX_IMAGE_BYTES = 20_000_000  # 20 MB, OpenAI's limit for one image
MEDIA_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp")
FETCH_TIMEOUT_S = 10.0
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ImagePolicy:
    allow_urls: bool = False
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    fetch_timeout_s: float = FETCH_TIMEOUT_S

    @classmethod
    def from_env(cls) -> "ImagePolicy":
        """``BATCH_ALLOW_IMAGE_URLS`` (off unless 1/true/yes/on) and ``BATCH_MAX_IMAGE_BYTES``."""
        allow = os.environ.get(ALLOW_URLS_ENV, "").strip().lower() in _TRUE
        limit = os.environ.get(MAX_BYTES_ENV, "").strip()
        try:
            max_bytes = int(limit) if limit else DEFAULT_MAX_IMAGE_BYTES
        except ValueError as error:
            raise ValueError(f"{MAX_BYTES_ENV}={limit!r} is not a number of bytes") from error
        return cls(allow_urls=allow, max_bytes=max_bytes)


def is_url(reference: str) -> bool:
    """Whether an image reference is a URL to fetch (rather than a data: URI)."""
    return reference.startswith(("https://", "http://"))


def image_problem(reference: object, policy: ImagePolicy) -> str | None:
    """Why an ``image_url`` part's ``url`` cannot be used, checked without decoding; or None."""
    if not isinstance(reference, str):
        return "image_url.url must be a string"
    if is_url(reference):
        if not policy.allow_urls:
            return (
                f"image URLs are not fetched here ({ALLOW_URLS_ENV} is off): send the image "
                "as a data: URI"
            )
        return None
    if not reference.startswith("data:"):
        return "image_url.url must be a data: URI (base64 PNG, JPEG or WebP) or an https:// URL"
    header, comma, payload = reference.partition(",")
    media, *options = header[len("data:") :].split(";")
    if not comma or "base64" not in options:
        return "an image's data: URI must be base64 (data:image/png;base64,...)"
    if media.lower() not in MEDIA_TYPES:
        return f"an image must be PNG, JPEG or WebP, not {media or 'an unnamed type'}"
    size = len(payload) * 3 // 4 - payload[-2:].count("=")
    if size > policy.max_bytes:
        return (
            f"the image is {size:,} bytes, over the limit of {policy.max_bytes:,} ({MAX_BYTES_ENV})"
        )
    return None


def fetch_image(url: str, policy: ImagePolicy) -> str:
    """The image at ``url`` as a data: URI; ValueError says why it cannot be had (a refused or
    slow server, a body over the size limit, something that is not an image)."""
    request = urllib.request.Request(url, headers={"User-Agent": "batch-infer"})
    try:
        with urllib.request.urlopen(request, timeout=policy.fetch_timeout_s) as answer:
            media = answer.headers.get_content_type().lower()
            data = answer.read(policy.max_bytes + 1)
    except urllib.error.HTTPError as error:
        raise ValueError(f"fetching the image at {url} answered {error.code}") from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ValueError(f"the image at {url} could not be fetched: {reason}") from error
    if len(data) > policy.max_bytes:
        raise ValueError(
            f"the image at {url} is over the limit of {policy.max_bytes:,} bytes ({MAX_BYTES_ENV})"
        )
    if media not in MEDIA_TYPES:
        raise ValueError(f"the image at {url} is {media}, not PNG, JPEG or WebP")
    return f"data:{media};base64,{base64.b64encode(data).decode()}"
