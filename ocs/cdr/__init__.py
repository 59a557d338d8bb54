"""CDRs: the journal (same txn as the charge), the file exporter, and a streaming reader."""
