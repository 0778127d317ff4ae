"""Inference shared by training validation, evaluation, the CLI and the service (numpy only, no torch)."""
