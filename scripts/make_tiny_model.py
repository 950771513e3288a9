"""Build a tiny random-weight Llama chat model with its own tokenizer, fully offline.

The model is for tests and the demo: it is small (a few MB), builds in seconds, and its
greedy output is non-empty and depends on the prompt (special tokens are suppressed in
the output head, see ../shared/STACK.md). Usage: ``python scripts/make_tiny_model.py DIR``;
``--lora DIR`` also writes a tiny LoRA adapter of the model (PEFT's layout, made without PEFT)
whose greedy answers differ from the base model's; ``--vision DIR`` a tiny vision-language model
(Idefics3: a 2-layer vision encoder on 32-pixel images before the same kind of text model, with
its processor), which vLLM runs on CPU, and whose greedy answers depend on the image.
"""

import argparse
import json
import random
from pathlib import Path
from typing import Any

# Tools, when a request has them, come first in a system turn (as Hermes-style templates do);
# an assistant's tool calls render as <tool_call>JSON</tool_call>, which vLLM's hermes parser
# reads back. A prompt without tools renders exactly as before.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|system|>' }}{% for t in tools %}{{ t | tojson }}{% endfor %}"
    "{{ eos_token }}{% endif %}"
    "{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' }}{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% for c in m.get('tool_calls') or [] %}{{ '<tool_call>' }}"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}{% endfor %}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# Markup of tool calls (vLLM's hermes tool parser) and of reasoning (its qwen3 reasoning
# parser): plain added tokens, as in those models, so they stay in the decoded text. They are
# appended after the model is built, so every other id and weight is what it was.
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<think>", "</think>"]
VERSION = 2  # 2: the markup tokens and the template that renders tools
WORDS = (
    "the a batch model prompt token result file night slot queue engine data lake "
    "sensor asset run write read fast slow green blue red cat dog tree river stone "
    "light dark north south one two three four five six seven eight nine ten "
    "hello world please summarize translate explain list why how what when where"
).split()


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 20))]
        lines.append(f"{' '.join(words)} {i} {rng.random():.4f}!?,.;:'\"()[]{{}}")
    return lines


def _text_config(tokenizer: Any, **extra: Any) -> Any:
    """The tiny Llama text model's config, for ``tokenizer``'s vocabulary."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build(out_dir: Path, seed: int = 0) -> Path:
    """Write tokenizer and model files to ``out_dir`` and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(600, seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512

    vocab = len(fast)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_text_config(fast, torch_dtype="float32"))
    with torch.no_grad():
        # Random weights keep choosing special tokens, which makes greedy text empty;
        # silence them and sharpen the rest so greedy text is non-empty and varied.
        head = model.lm_head.weight
        head.mul_(50.0)
        head[fast.all_special_ids] = 0.0
    fast.add_tokens(MARKUP_TOKENS)
    model.resize_token_embeddings(len(fast), mean_resizing=False)
    with torch.no_grad():  # the markup never wins a plain greedy step (ties go to lower ids)
        model.lm_head.weight[vocab:] = 0.0
    model.config.vocab_size = len(fast)
    fast.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    config_path = out_dir / "generation_config.json"
    if config_path.exists():  # keep vLLM's default sampling the OpenAI one
        config_path.unlink()
    stamp = {"built_by": __file__, "seed": seed, "version": VERSION}
    (out_dir / "README.md").write_text(json.dumps(stamp))
    return out_dir


# The adapter: rank 8 on every attention projection, as PEFT writes one.
LORA_RANK = 8
LORA_CONFIG = {
    "r": LORA_RANK,
    "lora_alpha": 2 * LORA_RANK,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "bias": "none",
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
}


def build_lora(model_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """Write a random rank-8 LoRA adapter of the model in ``model_dir`` to ``out_dir``.

    Both factors are random (PEFT starts B at zero, which would change nothing), large
    enough that greedy answers differ from the base model's.
    """
    import torch
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    outputs = {
        "q_proj": heads * head_dim,
        "k_proj": config["num_key_value_heads"] * head_dim,
        "v_proj": config["num_key_value_heads"] * head_dim,
        "o_proj": hidden,
    }
    inputs = {"q_proj": hidden, "k_proj": hidden, "v_proj": hidden, "o_proj": heads * head_dim}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name, width in outputs.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            a = torch.randn(LORA_RANK, inputs[name], generator=generator) * 0.5
            b = torch.randn(width, LORA_RANK, generator=generator) * 0.5
            tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    lora_config = {**LORA_CONFIG, "base_model_name_or_path": str(model_dir)}
    (out_dir / "adapter_config.json").write_text(json.dumps(lora_config, indent=1))
    return out_dir


# Idefics3's markup: an image becomes <fake_token_around_image><global-img> and image_seq_len
# <image> tokens (no splitting into tiles here; the tile tokens are there for the processor).
VISION_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
]
VISION_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_PIXELS = 32


def build_vision(model_dir: Path, out_dir: Path, seed: int = 2) -> Path:
    """Write a tiny random Idefics3 model, with the tokenizer of ``model_dir`` and Idefics3's
    markup tokens, to ``out_dir``."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    tokenizer.chat_template = VISION_TEMPLATE
    text = _text_config(tokenizer)
    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_PIXELS,
        patch_size=8,
        num_channels=3,
    )
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        scale_factor=2,  # (32 / 8)^2 / 2^2 = 4 image tokens an image
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    with torch.no_grad():  # as the text model: greedy text non-empty, no markup chosen
        head = model.lm_head.weight
        head.mul_(50.0)
        head[tokenizer.all_special_ids] = 0.0
        head[len(tokenizer) - len(VISION_TOKENS) :] = 0.0
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    images = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": IMAGE_PIXELS},
        do_image_splitting=False,
        max_image_size={"longest_edge": IMAGE_PIXELS},
    )
    processor = Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=4, chat_template=VISION_TEMPLATE
    )
    processor.save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)
    return out_dir


def _version(out_dir: Path) -> int:
    try:
        return int(json.loads((out_dir / "README.md").read_text()).get("version", 1))
    except (OSError, ValueError):
        return 0


def ensure(out_dir: Path) -> Path:
    """Build the model unless ``out_dir`` already holds this version of it."""
    if not (out_dir / "model.safetensors").exists() or _version(out_dir) != VERSION:
        build(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if present")
    parser.add_argument("--lora", type=Path, metavar="DIR", help="also write a LoRA adapter here")
    parser.add_argument(
        "--vision", type=Path, metavar="DIR", help="also write a vision-language model here"
    )
    args = parser.parse_args()
    if args.force:
        build(args.out_dir, args.seed)
    else:
        ensure(args.out_dir)
    print(args.out_dir)
    if args.lora is not None:
        print(build_lora(args.out_dir, args.lora))
    if args.vision is not None:
        print(build_vision(args.out_dir, args.vision))


if __name__ == "__main__":
    main()
