"""The input stage: read an upload line by line, validate it, store requests as shards."""
