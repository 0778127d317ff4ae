"""The trainer keeps its fit: from the pretrained nano (un-folded, all layers trainable), a short run on a few
real COCO images must RAISE the AP on those images, not just keep it. Fails if the recipe collapses (the
issue-11 failure: 0.526 -> 0.006) or stops learning."""

from __future__ import annotations

import json

from coco_data import ANNOTATIONS, COCO_DEV, need_data

from cvpipe.data.schema import DetectionDataset
from cvpipe.training.model_init import build_model
from cvpipe.training.params import TrainParams
from cvpipe.training.run import calibration_batches
from cvpipe.training.trainer import Trainer, TrainOutputs, seed_everything

N_IMAGES = 8


def few_coco_images() -> DetectionDataset:
    coco = json.loads(ANNOTATIONS.read_text())
    counts: dict[int, int] = {}
    for a in coco["annotations"]:
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    # images with a handful of objects (2..8): enough to score, few enough to fit in a few epochs
    picked = sorted(i["id"] for i in coco["images"] if 2 <= counts.get(i["id"], 0) <= 8)[:N_IMAGES]
    images = [dict(i, image_id=i["id"], blob=i["file_name"], split="train") for i in coco["images"]
              if i["id"] in picked]
    anns = [dict(ann_id=a["id"], image_id=a["image_id"], category_id=a["category_id"], x=a["bbox"][0],
                 y=a["bbox"][1], w=a["bbox"][2], h=a["bbox"][3], area=a["area"], iscrowd=a.get("iscrowd", 0))
            for a in coco["annotations"] if a["image_id"] in picked]
    cats = [dict(category_id=c["id"], name=c["name"], label=k)
            for k, c in enumerate(sorted(coco["categories"], key=lambda c: c["id"]))]
    return DetectionDataset.build(images, anns, cats)


def test_short_finetune_from_pretrained_nano_raises_ap_on_its_images(tmp_path):
    need_data()
    ds = few_coco_images()
    images_dir = COCO_DEV / "images"
    # lr 0.01 / 128 per image: half YOLOX's from-scratch rate (measured on the bundled sample: AP 0.71 -> 0.87;
    # on 8 images of the shared COCO dev set 0.50 -> 0.58, where the full rate dipped to 0.09 at epoch 2 and
    # only recovered to 0.52), warm-up over 4 of the 16 iterations
    # freeze_backbone=False: COCO classes would make "auto" train the head only; this test is of all layers
    params = TrainParams(scale="nano", pretrained="nano-onnx", img_size=320, epochs=8, batch_size=4,
                         freeze_backbone=False, lr_per_img=0.01 / 128, warmup_epochs=2, no_aug_epochs=8, ema=False,
                         device="cpu", workers=0, eval_interval=8, eval_batch_size=8)
    seed_everything(0)
    model, info = build_model("nano", len(ds.class_names), "nano-onnx", True, ds.class_names,
                              calibration_batches(ds, images_dir, params.img_size))
    assert info["loaded"] and not info["fused"] and not model.fused  # fully trainable, BN form
    trainer = Trainer(params, model, ds, ds, images_dir, TrainOutputs(tmp_path / "ck", tmp_path / "curves"),
                      {"pretrained": info})
    assert not trainer.frozen_backbone
    history = trainer.fit().history
    start, end = history[0], history[-1]
    print("AP by epoch:", [(r["epoch"], r["AP"]) for r in history if r.get("AP") is not None])
    assert start["epoch"] == 0 and start["AP"] > 0.2  # the pretrained start already detects these objects
    assert end["epoch"] == 8 and end["AP"] > start["AP"] + 0.04, [(r["epoch"], r["AP"]) for r in history]
    assert end["total_loss"] < history[1]["total_loss"]
