"""Fault injection for crash tests: `CVPIPE_FAULT=<step>:<point>` kills the process with SIGKILL when
that point is reached, exactly as a power cut or an OOM kill would. Points: `start` (run created),
`state_saved` (after a step saved resumable state), `before_commit` (step done, nothing committed),
`mid_commit` (after the first output entity is stored)."""

from __future__ import annotations

import os
import signal

ENV = "CVPIPE_FAULT"


def fault_point(step: str, point: str) -> None:
    if os.environ.get(ENV) == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)
