"""The estimate before a run: prompt tokens counted as the engine counts them, and an ETA.

The counts are checked where a user checks them: against ``usage.prompt_tokens`` of the
answers (the real engine), for chat, completions and embeddings lines. The fast paths of the
counter are checked against the tokenizer's own ``encode`` on texts chosen to break them.
"""

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from batch_assets.input.manifest import read_manifest
from batch_assets.lifecycle.throughput import estimate_eta, read_runs, record_run
from resources.chat_prompt import ChatTemplate
from resources.layout import BatchPaths
from resources.prompt_tokens import PromptCounter
from resources.storage import BatchStorage
from resources.token_count import GPT2_SPLIT, TokenCounter, ascii_pattern
from tests.conftest import MODEL_NAME, request_line

TEXTS = [
    "hello world",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines\r\n and \x0b odd \x0c spaces",
    "punctuation!!! (brackets) [and] {braces}... 'quotes' \"double\" it's we'll they've",
    "numbers 1234567 3.14159 and 1,000,000 and 2nd",
    "unicode: café naïve Ærøskøbing — “curly” ½ ² Ⅻ ①",
    "cjk 日本語のテキスト 中文 한국어 and emoji 🙂🚀 and \u200b zero width",
    "special tokens inside <s> the text </s> and <|user|> and <pad>",
    "separators \x1c\x1d\x1e\x1f and NUL-free controls \x07",
    "",
    " ",
    "\n\n\n",
    "mixed     runs\n   of   \t whitespace   ",
]


@pytest.fixture(scope="module")
def counter(tiny_model: Path) -> PromptCounter:
    return PromptCounter(tiny_model, 512)


def _encode(tiny_model: Path, text: str) -> int:
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def test_the_piecewise_count_equals_the_tokenizers_on_texts_chosen_to_break_it(tiny_model):
    counter = TokenCounter(tiny_model / "tokenizer.json")
    assert counter.fast
    for text in TEXTS * 30:  # past the first checked texts: the fast count alone
        assert counter.count(text) == _encode(tiny_model, text), repr(text)
    assert counter.fast, counter.fast_disabled_reason


def test_the_ascii_regex_splits_ascii_text_as_the_unicode_one():
    import re

    import regex

    fast, full = re.compile(ascii_pattern(GPT2_SPLIT) or ""), regex.compile(GPT2_SPLIT)
    for text in [t for t in TEXTS if t.isascii()]:
        assert fast.findall(text) == full.findall(text), repr(text)
    assert ascii_pattern(r"\p{M}+") is None  # a class it does not translate


def test_a_template_that_touches_the_text_is_rendered_line_by_line(tiny_model):
    source = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}</s>{% endfor %}"
        "{% if 'secret' in messages[-1]['content'] %}<|system|>found{% endif %}"
    )
    template = ChatTemplate(source, {})
    assert template.pieces((("user", True),)) is None
    body = {"messages": [{"role": "user", "content": "  a secret  "}]}
    assert template.render(body) == "<|user|>a secret</s><|system|>found"
    plain = ChatTemplate(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}", {}
    )
    pieces = plain.pieces((("user", True), ("assistant", False)))
    assert pieces == ["<|user|>", "", "<|assistant|>"]  # an empty text renders in place


def test_plain_lines_counted_by_shape_equal_the_rendered_ones(counter, tiny_model):
    texts = [t for t in TEXTS if t]
    for k in range(len(texts)):
        roles = ("system", "user", "assistant", "user")[: 1 + k % 4]
        lines = [texts[(k + j) % len(texts)] for j in range(len(roles))]
        fast = counter.count_chat(roles, lines, None, 1)
        messages = [{"role": r, "content": t} for r, t in zip(roles, lines, strict=True)]
        full = counter.count("/v1/chat/completions", {"messages": messages})
        if fast is not None:  # None: a text holds an added token, counted from the body
            assert fast == full, (roles, lines)
        assert counter.template is not None
        whole = counter.template._render(
            [counter.template._message(m) for m in messages], add_generation_prompt=True
        )
        assert full.prompt == _encode(tiny_model, whole)
        assert full.max_output == 512 - full.prompt  # no max_tokens: the room left
    assert counter.tokens.fast


def test_eta_comes_from_earlier_runs_of_the_model_and_is_none_without_them(tmp_path):
    storage = BatchStorage(root=str(tmp_path))
    assert estimate_eta(read_runs(storage, "m/x"), 100, 1000, 1000) is None
    record_run(storage, "m/x", "batch_a", 100, 5000, 1000, 10.0)
    record_run(storage, "m/x", "batch_b", 300, 15000, 3000, 20.0)
    record_run(storage, "m/x", "batch_c", 0, 0, 0, 5.0)  # answered nothing: not a rate
    eta = estimate_eta(read_runs(storage, "m/x"), 1000, 40_000, 20_000)
    assert eta is not None and eta.runs == 2
    assert eta.requests_per_s == pytest.approx(400 / 30)
    assert eta.by_requests_s == pytest.approx(1000 / (400 / 30))
    assert eta.at_most_s == pytest.approx(60_000 / (24_000 / 30))
    assert read_runs(storage, "other") == []


def _estimate(run) -> dict:
    manifest = read_manifest(run.storage, BatchPaths(run.batch["id"]))
    assert manifest.estimate is not None
    return {
        "counted": manifest.estimate.counted_lines,
        "prompt": manifest.estimate.prompt_tokens,
        "uncounted": manifest.estimate.uncounted,
    }


def _usage(run) -> int:
    return sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in run.output)


def test_counted_chat_prompts_equal_the_engines_usage(run_batch):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    bodies = {
        "plain": [{"role": "user", "content": "the night queue"}],
        "system": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "list three colours, please!"},
        ],
        "developer": [
            {"role": "developer", "content": "answer in French"},
            {"role": "user", "content": "café? 12,345 ½"},
        ],
        "parts": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
            }
        ],
        "turns": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "  spaced\n\nlines  "},
        ],
        "tools": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        "specials": [{"role": "user", "content": "text with </s> inside"}],
    }
    lines = []
    for name, messages in bodies.items():
        body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 2, "temperature": 0}
        if name == "tools":
            body |= {"tools": [tool], "tool_choice": "none"}
        lines.append(request_line(name, body))
    run = run_batch("\n".join(lines))
    assert len(run.output) == len(bodies), run.errors
    estimate = _estimate(run)
    assert estimate == {"counted": len(bodies), "prompt": _usage(run), "uncounted": {}}


def test_counted_completion_and_embedding_inputs_equal_the_engines_usage(run_batch):
    url = "/v1/completions"
    prompts = {
        "text": "the batch engine",
        "two": ["one two", "red <s> cat"],
        "ids": [10, 20, 30, 40],
        "id-lists": [[5, 6], [7, 8, 9]],
    }
    lines = [
        request_line(c, {"model": MODEL_NAME, "prompt": p, "max_tokens": 2}, url=url)
        for c, p in prompts.items()
    ]
    run = run_batch("\n".join(lines), name="completions.jsonl")
    assert len(run.output) == 4, run.errors
    assert _estimate(run) == {"counted": 4, "prompt": _usage(run), "uncounted": {}}
    url = "/v1/embeddings"
    inputs = {"one": "the night queue", "two": ["red cat", "blue dog"]}
    lines = [request_line(c, {"model": MODEL_NAME, "input": i}, url=url) for c, i in inputs.items()]
    run = run_batch("\n".join(lines), name="embeddings.jsonl")
    assert len(run.output) == 2, run.errors
    assert _estimate(run) == {"counted": 2, "prompt": _usage(run), "uncounted": {}}


def test_estimate_of_a_file_not_yet_run(tmp_path, tiny_model, capsys):
    from batch_assets.cli.main import main

    upload = tmp_path / "requests.jsonl"
    good = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi there"}]}
    upload.write_text(
        request_line("a", {**good, "max_tokens": 7})
        + "\n"
        + request_line("b", good)
        + "\nnot json\n"
    )
    flags = ["--storage", str(tmp_path / "data"), "--model", str(tiny_model)]
    flags += ["--served-model-name", MODEL_NAME, "--max-model-len", "512"]
    assert main(["estimate", str(upload), "--json", *flags]) == 0
    shown = json.loads(capsys.readouterr().out)
    prompt = _encode(tiny_model, "<s><|user|>hi there</s><|assistant|>")
    assert shown["requests"] == 2 and shown["invalid"] == 1
    assert shown["estimate"]["prompt_tokens"] == 2 * prompt
    assert shown["estimate"]["max_output_tokens"] == 7 + (512 - prompt)
    assert shown["eta"] is None  # no run of the model here yet: no invented figure
    assert main(["estimate", str(upload), *flags]) == 0
    text = capsys.readouterr().out
    assert f"prompt tokens: {2 * prompt}" in text and "eta: unknown" in text
