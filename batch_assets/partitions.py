"""One dynamic partition per batch; its key is the batch id."""

import dagster as dg

batch_partitions = dg.DynamicPartitionsDefinition(name="batches")
