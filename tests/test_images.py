"""Images in chat lines: data: URIs answered as `vllm serve` answers them, every bad image one
error line, and URLs fetched (where allowed) with a timeout and a size limit."""

import base64
import contextlib
import io
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai.types.chat as oc
import pytest
from PIL import Image

from batch_assets.input.validation import Limits, validate_input
from resources.engines.base import ServedNames
from resources.engines.vllm_engine import VLLMEngine
from resources.images import ImagePolicy, fetch_image, image_problem
from resources.layout import BatchPaths
from resources.storage import BatchStorage
from tests.conftest import MAX_MODEL_LEN, ROOT, request_line
from tests.vllm_servers import VLLMServer, start_all

sys.path.insert(0, str(ROOT / "scripts"))
from make_tiny_model import build_vision

VISION = "tiny-vision"


def png(color: str, size: tuple[int, int] = (40, 24), kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, kind)
    return buffer.getvalue()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def image_body(url: str, text: str = "what is this", **params) -> dict:
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return {
        "model": VISION,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **params,
    }


# -- the checks, without an engine -----------------------------------------------------------


def test_a_data_uri_is_checked_without_decoding_it():
    policy = ImagePolicy(max_bytes=1000)
    assert image_problem(data_uri(png("red")), policy) is None
    assert image_problem(data_uri(png("red", kind="WEBP"), "image/webp"), policy) is None
    assert "over the limit of 1,000" in str(image_problem(data_uri(b"x" * 1001), policy))
    assert "PNG, JPEG or WebP" in str(image_problem(data_uri(b"x", "image/gif"), policy))
    assert "base64" in str(image_problem("data:image/png,rawbytes", policy))
    assert "BATCH_ALLOW_IMAGE_URLS is off" in str(image_problem("https://x/y.png", policy))
    assert image_problem("https://x/y.png", ImagePolicy(allow_urls=True)) is None
    assert "data: URI" in str(image_problem("file:///etc/passwd", policy))
    assert "string" in str(image_problem(None, policy))


def test_the_policy_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("BATCH_ALLOW_IMAGE_URLS", "true")
    monkeypatch.setenv("BATCH_MAX_IMAGE_BYTES", "5000")
    assert ImagePolicy.from_env() == ImagePolicy(allow_urls=True, max_bytes=5000)
    monkeypatch.setenv("BATCH_MAX_IMAGE_BYTES", "lots")
    with pytest.raises(ValueError, match="BATCH_MAX_IMAGE_BYTES"):
        ImagePolicy.from_env()


@contextmanager
def image_server() -> Iterator[str]:
    """Serves /ok.png, /big.png (2,000 bytes), /slow.png (after 3 s), /page (HTML), /gone."""
    ok = png("green")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/gone":
                self.send_error(404)
                return
            if self.path == "/slow.png":
                time.sleep(3)
            body, kind = {
                "/big.png": (b"\x89PNG" + b"x" * 1996, "image/png"),
                "/page": (b"<html></html>", "text/html"),
            }.get(self.path, (ok, "image/png"))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError):  # the client gave up on the slow one
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_an_allowed_url_is_fetched_within_its_time_and_size_limits():
    policy = ImagePolicy(allow_urls=True, max_bytes=1500, fetch_timeout_s=1.0)
    with image_server() as base:
        assert fetch_image(f"{base}/ok.png", policy) == data_uri(png("green"))
        with pytest.raises(ValueError, match="over the limit of 1,500 bytes"):
            fetch_image(f"{base}/big.png", policy)
        with pytest.raises(ValueError, match="could not be fetched"):
            fetch_image(f"{base}/slow.png", policy)
        with pytest.raises(ValueError, match="text/html, not PNG"):
            fetch_image(f"{base}/page", policy)
        with pytest.raises(ValueError, match="answered 404"):
            fetch_image(f"{base}/gone", policy)


def test_validation_makes_each_bad_image_one_error_line(tmp_path):
    lines = [
        request_line("ok", image_body(data_uri(png("red")))),
        request_line("too-big", image_body(data_uri(b"\x89PNG" + b"x" * 3000))),
        request_line("a-url", image_body("https://example.com/cat.png")),
        request_line("gif", image_body(data_uri(b"GIF89a", "image/gif"))),
        request_line("ok-2", image_body(data_uri(png("blue")))),
    ]
    storage = BatchStorage(root=str(tmp_path))
    storage.write_bytes("inbox/f.jsonl", "\n".join(lines).encode())
    limits = Limits(1 << 20, 100, 1 << 30, images=ImagePolicy(max_bytes=2000))
    report = validate_input(
        storage, "inbox/f.jsonl", BatchPaths("b"), ServedNames((VISION,)), limits
    )
    assert (report.valid, report.invalid) == (2, 3)
    assert report.error_codes == {"invalid_image": 3}


# -- the vision model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_model(tiny_model, tmp_path_factory) -> Path:
    return build_vision(tiny_model, tmp_path_factory.mktemp("models") / VISION)


@pytest.mark.slow
def test_image_lines_answer_as_vllm_serve_and_bad_images_are_error_lines(
    run_batch, vision_model, tmp_path_factory, monkeypatch
):
    server = VLLMServer(vision_model, tmp_path_factory.mktemp("vllm-vision"), VISION)
    start_all([server])
    try:
        colors = ["red", "green", "blue", "white", "black", "yellow"]
        good = [
            (f"img-{c}", image_body(data_uri(png(c, (20 + 7 * i, 30)), "image/png"), f"what {i}"))
            for i, c in enumerate(colors)
        ]
        good.append(("jpeg", image_body(data_uri(png("red", kind="JPEG"), "image/jpeg"))))
        good.append(("green", image_body(data_uri(png("green")))))  # image_server's /ok.png
        expected = {}
        for cid, body in good:
            answer = httpx.post(f"{server.url}/chat/completions", json=body, timeout=120)
            assert answer.status_code == 200, answer.text
            expected[cid] = answer.json()
    finally:
        server.stop()
    bad = [
        ("not-an-image", image_body(data_uri(b"these bytes are no picture"))),
        ("bad-base64", image_body("data:image/png;base64,@@@not-base64@@@")),
        ("a-url", image_body("https://example.com/cat.png")),
        # 21 MB: over the 20 MB default, within a line's 32 MiB
        ("over-limit", image_body(data_uri(b"\x89PNG" + b"x" * 21_000_000))),
    ]
    content = "".join(request_line(cid, body) + "\n" for cid, body in good + bad)
    engine = VLLMEngine(
        model=str(vision_model),
        served_model_name=VISION,
        max_model_len=MAX_MODEL_LEN,
        keep_loaded=True,
    )
    run = run_batch(content, engine_override=engine)
    answered = {line["custom_id"]: line["response"]["body"] for line in run.output}
    assert set(answered) == set(expected)
    for cid, body in answered.items():
        oc.ChatCompletion.model_validate(body)
        theirs = expected[cid]
        assert (
            body["choices"][0]["message"]["content"] == (theirs["choices"][0]["message"]["content"])
        ), cid
        for count in ("prompt_tokens", "completion_tokens"):
            assert body["usage"][count] == theirs["usage"][count], cid
    # The images change the answers (else this test could not tell them apart).
    assert len({body["choices"][0]["message"]["content"] for body in answered.values()}) > 1
    errors = run.by_id()
    for cid in ("not-an-image", "bad-base64"):  # found when the image is decoded, at run time
        assert errors[cid]["response"]["status_code"] == 400
        assert errors[cid]["response"]["body"]["error"]["message"]
    for cid in ("a-url", "over-limit"):  # found at validation
        assert errors[cid]["error"]["code"] == "invalid_image"
    assert "BATCH_ALLOW_IMAGE_URLS" in errors["a-url"]["error"]["message"]
    assert "20,000,000" in errors["over-limit"]["error"]["message"]
    assert run.batch["request_counts"] == {"total": 12, "completed": 8, "failed": 4}
    # Where the operator allows URLs, an image is fetched when its request is prepared.
    monkeypatch.setenv("BATCH_ALLOW_IMAGE_URLS", "1")
    with image_server() as base:
        urls = [("url-ok", image_body(f"{base}/ok.png")), ("url-gone", image_body(f"{base}/gone"))]
        fetched = run_batch(
            "".join(request_line(cid, body) + "\n" for cid, body in urls),
            engine_override=engine,
        )
    by_id = fetched.by_id()
    assert by_id["url-ok"]["response"]["body"]["choices"] == answered["green"]["choices"]
    gone = by_id["url-gone"]["response"]
    assert gone["status_code"] == 400 and "answered 404" in gone["body"]["error"]["message"]
