"""Training parameters (the model_train step's params), validated by pydantic."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from cvpipe.pipeline import StepParams

# Augmentation defaults of each model scale: Megvii's YOLOX exps (exps/default/yolox_*.py) train the small models
# without mixup and with milder mosaic zoom, and nano on mosaics half the time.
_SMALL = {"mixup": False, "mosaic_scale": (0.5, 1.5)}
_LARGE = {"mixup": True, "mosaic_scale": (0.1, 2.0), "mosaic_prob": 1.0}
SCALE_AUGMENT: dict[str, dict] = {"nano": {**_SMALL, "mosaic_prob": 0.5}, "tiny": {**_SMALL, "mosaic_prob": 1.0},
                                  "s": _LARGE, "m": _LARGE, "l": _LARGE, "x": _LARGE}


class TrainParams(StepParams):
    # model
    scale: Literal["nano", "tiny", "s", "m", "l", "x"] = Field("s", description="YOLOX scale")
    pretrained: str = Field("coco", description='weights to start from: a path, an http(s) URL, "coco" (the '
                            'standard COCO checkpoint of the scale), "nano-onnx" (the shipped YOLOX-Nano ONNX, fused) '
                            'or "none"')
    pretrained_required: bool = Field(True, description="fail (before training) when the pretrained weights cannot "
                                      "be had; false = start from random weights with a warning")
    keep_fused: bool = Field(False, description="keep a BN-folded start (nano-onnx) fused, which trains only its "
                             "head; by default it is un-folded into BatchNorm form and every layer trains")
    # schedule
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1, description="images per optimizer step, over all processes")
    lr_per_img: float = Field(0.01 / 64, gt=0, description="learning rate = lr_per_img * batch_size")
    warmup_epochs: Optional[float] = Field(None, ge=0, description="quadratic LR warm-up; None = auto: one epoch "
                                           "but at least 30 iterations, at most a quarter of the run")
    warmup_lr_start: float = Field(0.0, ge=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1)
    no_aug_epochs: Optional[int] = Field(None, ge=0, description="last epochs without augmentation (plain "
                                         "letterboxed images, L1 box loss on); None = auto: 15 %% of the epochs "
                                         "(at least 1) when augmenting, 0 otherwise".replace("%%", "%"))
    no_aug_lr: Literal["cosine", "min"] = Field("cosine", description='LR in the no-aug epochs: "cosine" carries '
                                               'the cosine decay on to the last iteration; "min" holds it at the '
                                               'minimum (YOLOX\'s 300-epoch recipe)')
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    grad_clip: Optional[float] = Field(None, description="max gradient L2 norm (None / 0 = no clipping)")
    freeze_bn: bool = Field(False, description="keep BatchNorm statistics and affine weights fixed")
    freeze_backbone: Union[bool, Literal["auto"]] = Field(
        "auto", description='train only the head (backbone + PAFPN fixed). "auto": frozen when the start already '
        'predicts every class of the data (COCO weights and COCO class names, or a checkpoint trained on the same '
        'classes), where training every layer cost 0.013-0.021 AP on held-out images; every layer trains for new '
        'classes. Always frozen for a fused (keep_fused) start, whose BN-free backbone diverges when trained')
    ema: bool = True
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    # input and augmentation
    img_size: int = Field(640, ge=32, description="square training / evaluation input size, multiple of 32")
    mosaic: bool = True
    mosaic_prob: Optional[float] = Field(None, ge=0, le=1, description="None = the scale's YOLOX default "
                                         "(SCALE_AUGMENT: 0.5 for nano, 1.0 otherwise)")
    mixup: Optional[bool] = Field(None, description="None = the scale's YOLOX default (off for nano and tiny)")
    mixup_prob: float = Field(1.0, ge=0, le=1)
    mixup_scale: tuple[float, float] = (0.5, 1.5)
    affine: bool = True
    degrees: float = Field(10.0, ge=0)
    translate: float = Field(0.1, ge=0, le=1)
    mosaic_scale: Optional[tuple[float, float]] = Field(None, description="affine scale range; None = the scale's "
                                                        "YOLOX default ((0.5, 1.5) for nano and tiny, else (0.1, 2))")
    shear: float = Field(2.0, ge=0)
    hsv: bool = True
    hsv_prob: float = Field(1.0, ge=0, le=1)
    flip: bool = True
    flip_prob: float = Field(0.5, ge=0, le=1)
    min_box_size: float = Field(2.0, ge=0, description="boxes smaller than this (px) after augmentation are dropped")
    max_labels: int = Field(120, ge=1, description="most targets kept per image")
    # evaluation
    eval_interval: int = Field(1, ge=1, description="evaluate on the val split every N epochs (and after the last)")
    eval_batch_size: int = Field(8, ge=1)
    # runtime
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = load in the training process)")
    cache_images: Optional[bool] = Field(None, description="keep decoded, resized images in memory between epochs "
                                         "(each worker its own copy); None = when that stays under 1 GiB")
    seed: int = 0
    resume: Optional[str] = Field(None, description="last.pt of an interrupted run to continue from")
    max_train_images: Optional[int] = Field(None, ge=1, description="train on at most this many train images "
                                            "(the lowest image_ids; for quick demos); None = all")

    @field_validator("img_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"img_size must be a multiple of 32, got {v}")
        return v

    @field_validator("mixup_scale", "mosaic_scale")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"scale range must be 0 < low <= high, got {v}")
        return v

    @model_validator(mode="after")
    def _auto(self):
        """Resolve the scale's augmentation defaults and auto no_aug_epochs for this run length (auto warm-up
        depends on the iterations per epoch: the trainer resolves it and reports it)."""
        for name, value in SCALE_AUGMENT[self.scale].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.no_aug_epochs is None:
            augmenting = self.mosaic or self.mixup or self.affine or self.hsv or self.flip
            self.no_aug_epochs = max(1, round(0.15 * self.epochs)) if augmenting else 0
        return self

    @model_validator(mode="after")
    def _check(self):
        if self.pretrained.strip().lower() == "nano-onnx" and self.scale != "nano":
            raise ValueError(f'pretrained "nano-onnx" holds YOLOX-Nano weights; set scale: nano (got {self.scale!r})')
        return self

    @property
    def lr(self) -> float:
        return self.lr_per_img * self.batch_size
