"""Versioned artifact store on any fsspec URL (local folder by default, S3, ...)."""

from cvpipe.store.paths import (
                                InvalidRunId,
                                is_inside,
                                join_inside,
                                safe_relpath,
                                validate_digest,
                                validate_name,
                                validate_run_id,
)
from cvpipe.store.store import ArtifactStore, IntegrityError, RunRecord, new_run_id

__all__ = ["ArtifactStore", "IntegrityError", "InvalidRunId", "RunRecord", "is_inside", "join_inside", "new_run_id",
           "safe_relpath", "validate_digest", "validate_name", "validate_run_id"]
