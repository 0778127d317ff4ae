"""Detection data: the canonical dataset schema, format readers, validation, split and report."""
