"""OpenAI's Files and Batches HTTP API over the batch storage."""
