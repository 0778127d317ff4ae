"""Self-contained HTML reports (tables and embedded PNGs), shared by every step that reports."""
