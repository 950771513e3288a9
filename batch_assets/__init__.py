"""Dagster assets that turn an OpenAI-Batch JSONL upload into OpenAI-format result files."""
