"""Pipeline core: step registry (`step`), config, runner."""

from cvpipe.pipeline.step import (Input, Output, SourceDigest, StepContext, StepParams, StepSpec, get_step, registry,
                                  step)

__all__ = ["Input", "Output", "SourceDigest", "StepContext", "StepParams", "StepSpec", "get_step", "registry", "step"]
