"""End-to-end learning check: YOLOX-Nano overfits a few synthetic images to a high COCO mAP."""

import numpy as np
import pytest
import torch

from cvpipe.evaluation.coco import evaluate_detections
from cvpipe.models.yolox import build_yolox
from cvpipe.models.yolox.model import recalibrate_bn
from cvpipe.vision import postprocess

COLOURS = torch.tensor([[255.0, 0, 0], [0, 255.0, 0], [0, 0, 255.0]])  # BGR: blue, green, red classes


def rectangles_dataset(n_images=4, size=256, seed=0):
    rng = np.random.default_rng(seed)
    images = torch.full((n_images, 3, size, size), 114.0)
    targets = torch.zeros(n_images, 3, 5)
    gt = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(3)]}
    for b in range(n_images):
        gt["images"].append({"id": b + 1, "width": size, "height": size})
        for j in range(1 + b % 3):
            w, h = (int(v) for v in rng.integers(size // 6, size // 2, 2))
            x1, y1 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            c = (b + j) % 3
            images[b, :, y1:y1 + h, x1:x1 + w] = COLOURS[c][:, None, None]
            targets[b, j] = torch.tensor([c, x1 + w / 2, y1 + h / 2, w, h], dtype=torch.float32)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": b + 1, "category_id": c + 1,
                                      "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    return images, targets, gt


def test_recalibrate_bn_uses_exact_batch_statistics():
    torch.manual_seed(0)
    model = build_yolox("nano", 3)
    x = torch.rand(2, 3, 64, 64) * 255
    recalibrate_bn(model, [x])
    assert not model.training
    stem_in = torch.nn.functional.conv2d(
        torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1),
        model.backbone.backbone.stem.conv.conv.weight, padding=1)
    bn = model.backbone.backbone.stem.conv.bn
    assert torch.allclose(bn.running_mean, stem_in.mean((0, 2, 3)), rtol=1e-4, atol=1e-3)
    assert torch.allclose(bn.running_var, stem_in.var((0, 2, 3), unbiased=True), rtol=1e-3)
    assert bn.momentum == 0.03


@pytest.mark.slow
def test_nano_overfits_synthetic_images_to_high_map():
    torch.manual_seed(0)
    images, targets, gt = rectangles_dataset()
    model = build_yolox("nano", 3).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(200):
        loss = model(images, targets)["total_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    recalibrate_bn(model, [images])  # 200 steps are too few for momentum-0.03 running stats to catch up
    with torch.no_grad():
        out = model(images).numpy()
    results = []
    for b in range(len(images)):
        det = postprocess(out[b], 1.0, score_thr=0.05, nms_thr=0.5)
        for box, score, label in zip(det.boxes, det.scores, det.labels):
            results.append({"image_id": b + 1, "category_id": int(label) + 1, "score": float(score),
                            "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    stats = evaluate_detections(gt, results)["stats"]
    assert stats["AP50"] >= 0.9, stats
    assert stats["AP"] >= 0.6, stats
