"""Pipeline core: step registry (`step`), config, runner."""

from cvpipe.pipeline.step import Input, Output, StepContext, StepParams, StepSpec, get_step, registry, step

__all__ = ["Input", "Output", "StepContext", "StepParams", "StepSpec", "get_step", "registry", "step"]
