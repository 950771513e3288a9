"""Dagster resources: the vLLM engine and the batch storage."""
