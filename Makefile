# The two commands of the README: `make demo` (the main job end to end) and `make test`.
export HF_HUB_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM := false
VENV := .venv/bin
MODEL := models/tiny-chat

.PHONY: install model demo test test-fast lint dev engine-server

install:
	scripts/install.sh

# Builds the tiny model when it is missing or of an older version (a no-op otherwise).
model: install
	@$(VENV)/python scripts/make_tiny_model.py $(MODEL) >/dev/null

demo: model
	$(VENV)/batch-infer run examples/requests.jsonl --storage data \
		--model $(MODEL) --served-model-name tiny-chat

test: model
	$(VENV)/python -m pytest

test-fast: model
	$(VENV)/python -m pytest -m "not slow"

lint: install
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/mypy

# dagster dev on 127.0.0.1:3000 and, beside it, the HTTP API on 127.0.0.1:8000 (stopped with it).
dev: model
	mkdir -p dagster_home
	export DAGSTER_HOME=$(CURDIR)/dagster_home BATCH_SERVED_MODEL_NAME=$${BATCH_SERVED_MODEL_NAME:-tiny-chat}; \
	$(VENV)/batch-infer serve --host 127.0.0.1 --port $${BATCH_API_PORT:-8000} & api=$$!; \
	trap 'kill $$api 2>/dev/null' EXIT INT TERM; \
	$(VENV)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# One vLLM OpenAI server (vLLM's own entry point) on the generated model, for pool mode:
#   BATCH_ENGINE_URLS=http://127.0.0.1:8100/v1 make dev
engine-server: model
	$(VENV)/python scripts/engine_server.py --port $${BATCH_ENGINE_PORT:-8100} \
		--served-model-name $${BATCH_SERVED_MODEL_NAME:-tiny-chat}
