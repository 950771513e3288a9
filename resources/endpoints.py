"""The OpenAI endpoints a batch line may name in ``url`` (one endpoint per batch)."""

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
EMBEDDINGS_URL = "/v1/embeddings"
RESPONSES_URL = "/v1/responses"
# vLLM's scoring endpoints (a pooling model: an embedding model or a cross-encoder).
SCORE_URL = "/v1/score"
RERANK_URL = "/v1/rerank"
SUPPORTED_URLS = (CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL, RESPONSES_URL, SCORE_URL, RERANK_URL)
# Endpoints answered by a pooling model rather than a generating one.
POOLING_URLS = (EMBEDDINGS_URL, SCORE_URL, RERANK_URL)
SCORING_URLS = (SCORE_URL, RERANK_URL)
# The other paths vllm run-batch (and vllm serve) take for the scoring endpoints.
URL_ALIASES = {"/score": SCORE_URL, "/rerank": RERANK_URL, "/v2/rerank": RERANK_URL}


def canonical_url(url: str) -> str:
    """The endpoint ``url`` names: ``/score`` is ``/v1/score``, as in vllm run-batch."""
    return URL_ALIASES.get(url, url)
