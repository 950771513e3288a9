"""Start one vLLM OpenAI server (vLLM's own entry point) on the generated model, for pool mode.

    .venv/bin/python scripts/engine_server.py [--port 8100] [--served-model-name tiny-chat]
        [any further vllm serve flag, e.g. --scheduling-policy priority]

The process becomes the server (``exec``), so stopping it stops the server. On a GPU, run
``vllm serve`` with your model instead; this script only fills in the development defaults
(the tiny model, eager mode and a 1 GiB KV cache on CPU).
"""

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "tiny-chat"


def server_command(
    port: int, served_model_name: str, model: Path = DEFAULT_MODEL, extra: list[str] | None = None
) -> list[str]:
    """The command line of a vLLM OpenAI server on ``127.0.0.1:port``."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        served_model_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "512",
        "--enforce-eager",
        "--seed",
        "0",
        "--disable-uvicorn-access-log",
        *(extra or []),
    ]


def server_env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--served-model-name", default="tiny-chat")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args, extra = parser.parse_known_args()
    command = server_command(args.port, args.served_model_name, args.model, extra)
    os.execve(command[0], command, server_env())


if __name__ == "__main__":
    main()
