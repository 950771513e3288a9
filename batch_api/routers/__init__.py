"""The API's routers, one per resource: files and batches."""
