"""Pipeline core: step registry (`step`), entities, config, runner."""

from cvpipe.pipeline.entity import Entity, Folder
from cvpipe.pipeline.step import (
    Decision,
    Input,
    Output,
    Produced,
    Resolved,
    SourceDigest,
    StepContext,
    StepParams,
    StepSpec,
    get_step,
    registry,
    step,
)

__all__ = ["Decision", "Entity", "Folder", "Input", "Output", "Produced", "Resolved", "SourceDigest", "StepContext",
           "StepParams", "StepSpec", "get_step", "registry", "step"]
