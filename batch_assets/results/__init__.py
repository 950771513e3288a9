"""The result stage: output.jsonl, errors.jsonl and the final batch record."""
