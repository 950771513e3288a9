"""The batch lifecycle: batch records, their status transitions, cancellation, file records."""
