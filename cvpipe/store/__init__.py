"""Versioned artifact store on any fsspec URL (local folder by default, S3, ...)."""

from cvpipe.store.store import ArtifactStore, RunRecord, new_run_id

__all__ = ["ArtifactStore", "RunRecord", "new_run_id"]
