"""The inference stage: run a batch's pending requests on the engine (and the preview)."""
