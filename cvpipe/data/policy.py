"""What data_prep does about each validation rule (the rules themselves are in cvpipe.data.validate). Its own
module, light to import: the step's params name it, and reading a config must not import pandas."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ValidationPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    missing_image: Literal["drop", "fail"] = "drop"
    corrupt_image: Literal["drop", "fail"] = "drop"
    size_mismatch: Literal["fix", "drop", "fail"] = Field("fix", description="fix: use the decoded size")
    duplicate_image: Literal["drop", "keep", "fail"] = Field("drop", description="drop: keep the first copy")
    unknown_category: Literal["drop", "fail"] = "drop"
    nan_box: Literal["drop", "fail"] = "drop"
    duplicate_ann_id: Literal["fix", "drop", "fail"] = Field("fix", description="fix: give new ids")
    inverted_box: Literal["fix", "drop", "fail"] = Field(
        "fix", description="fix: swap the corners back when the source gives corners (VOC, YOLO), else drop")
    out_of_image: Literal["fix", "drop", "fail"] = Field("fix", description="fix: clip to the image")
    tiny_box: Literal["drop", "keep", "fail"] = "drop"
    min_box_size: float = Field(1.0, ge=0, description="boxes narrower or lower than this (px) are tiny")
    empty_image: Literal["keep", "drop", "fail"] = Field("keep", description="keep: as negatives")
