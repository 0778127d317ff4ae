import torch
import torch.nn.functional as F

from cvpipe.models.yolox import build_yolox
from cvpipe.models.yolox.head import make_grid
from cvpipe.models.yolox.loss import pairwise_iou_cxcywh, simota_assign, yolox_loss

LOSS_KEYS = {"total_loss", "iou_loss", "obj_loss", "cls_loss", "l1_loss", "num_fg"}


def synthetic_batch():
    """Two 128x128 grey images with coloured rectangles; class = colour."""
    imgs = torch.full((2, 3, 128, 128), 114.0)
    colours = torch.tensor([[255.0, 0, 0], [0, 255.0, 0], [0, 0, 255.0]])
    boxes = [[(0, 30, 20, 90, 60)], [(1, 10, 70, 50, 120), (2, 60, 10, 120, 40)]]  # label, x1, y1, x2, y2
    targets = torch.zeros(2, 3, 5)
    for b, items in enumerate(boxes):
        for j, (c, x1, y1, x2, y2) in enumerate(items):
            imgs[b, :, y1:y2, x1:x2] = colours[c][:, None, None]
            targets[b, j] = torch.tensor([c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    return imgs, targets


def reference_simota(pred_boxes, obj_logit, cls_logit, gt_boxes, gt_classes, centers, stride, num_classes):
    """Straightforward per-gt-loop SimOTA as in the YOLOX paper (BCE over a [G, A, C] tensor)."""
    g = gt_boxes.shape[0]
    cx, cy = centers[:, 0], centers[:, 1]
    in_box = torch.stack([(cx > b[0] - b[2] / 2) & (cx < b[0] + b[2] / 2)
                          & (cy > b[1] - b[3] / 2) & (cy < b[1] + b[3] / 2)
                          for b in gt_boxes])
    in_ctr = torch.stack([((cx - b[0]).abs() < 2.5 * stride) & ((cy - b[1]).abs() < 2.5 * stride) for b in gt_boxes])
    cand = (in_box | in_ctr).any(0)
    idx = cand.nonzero().squeeze(1)
    ious = pairwise_iou_cxcywh(gt_boxes, pred_boxes[idx])
    p = (cls_logit[idx].sigmoid() * obj_logit[idx, None].sigmoid()).sqrt()
    onehot = F.one_hot(gt_classes, num_classes).float()
    cls_cost = F.binary_cross_entropy(p[None].repeat(g, 1, 1), onehot[:, None].repeat(1, len(idx), 1),
                                      reduction="none").sum(-1)
    cost = cls_cost + 3 * -torch.log(ious + 1e-8) + 1e5 * (~(in_box & in_ctr)[:, idx]).float()
    match = torch.zeros_like(cost, dtype=torch.bool)
    for i in range(g):
        k = max(int(torch.topk(ious[i], min(10, len(idx))).values.sum()), 1)
        match[i, torch.topk(cost[i], k, largest=False).indices] = True
    for a in range(len(idx)):
        if match[:, a].sum() > 1:
            best = cost[:, a].argmin()
            match[:, a] = False
            match[best, a] = True
    fg = torch.zeros(len(pred_boxes), dtype=torch.bool)
    fg[idx[match.any(0)]] = True
    matched = match[:, match.any(0)].float().argmax(0)
    return fg, matched, cls_cost


def test_simota_matches_loop_reference():
    torch.manual_seed(0)
    grid, stride = make_grid([(16, 16), (8, 8), (4, 4)])
    centers = (grid + 0.5) * stride[:, None]
    n, c = len(grid), 6
    for trial in range(5):
        xy = torch.rand(5, 2) * 100 + 14
        wh = torch.rand(5, 2) * 60 + 8
        gt = torch.cat([xy, wh], 1)
        gt_cls = torch.randint(0, c, (5,))
        pred = torch.cat([centers + torch.randn(n, 2) * 4, (torch.rand(n, 2) * 50 + 5)], 1)
        obj, cls = torch.randn(n), torch.randn(n, c)
        fg, matched, _ = simota_assign(pred, obj, cls, gt, gt_cls, centers, stride)
        ref_fg, ref_matched, _ = reference_simota(pred, obj, cls, gt, gt_cls, centers, stride, c)
        assert fg.any()
        assert torch.equal(fg, ref_fg), trial
        assert torch.equal(matched, ref_matched), trial


def test_loss_zero_targets_only_objectness():
    torch.manual_seed(0)
    model = build_yolox("nano", 3).train()
    imgs, _ = synthetic_batch()
    losses = model(imgs, torch.zeros(2, 4, 5))
    assert set(losses) == LOSS_KEYS
    assert losses["num_fg"] == 0
    assert losses["iou_loss"] == 0 and losses["cls_loss"] == 0 and losses["l1_loss"] == 0
    # every anchor a negative at prior 0.01: obj loss = N * -log(0.99) per image, divided by max(num_fg, 1) = 1
    n = 2 * (16 * 16 + 8 * 8 + 4 * 4)
    assert abs(float(losses["obj_loss"].detach()) / (n * -torch.log(torch.tensor(0.99))) - 1) < 0.3
    losses["total_loss"].backward()  # graph stays connected
    assert model.head.obj_preds[0].bias.grad is not None
    # also an empty targets tensor and a batch mixing empty and non-empty images
    assert model(imgs, torch.zeros(2, 0, 5))["num_fg"] == 0
    _, t = synthetic_batch()
    t[0] = 0
    assert model(imgs, t)["num_fg"] > 0


def test_l1_loss_only_with_use_l1():
    torch.manual_seed(0)
    model = build_yolox("nano", 3).train()
    imgs, targets = synthetic_batch()
    assert model(imgs, targets)["l1_loss"] == 0
    model.head.use_l1 = True
    losses = model(imgs, targets)
    assert losses["l1_loss"] > 0
    total = losses["iou_loss"] + losses["obj_loss"] + losses["cls_loss"] + losses["l1_loss"]
    assert torch.allclose(losses["total_loss"], total)


def test_bad_targets_raise():
    model = build_yolox("nano", 3).train()
    imgs, targets = synthetic_batch()
    import pytest

    with pytest.raises(ValueError, match=r"\[B, M, 5\]"):
        model(imgs, targets[..., :4])
    targets[0, 0, 0] = 7
    with pytest.raises(ValueError, match="labels"):
        model(imgs, targets)


def test_loss_decreases_on_tiny_overfit():
    torch.manual_seed(0)
    model = build_yolox("nano", 3).train()
    imgs, targets = synthetic_batch()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = model(imgs, targets)
        opt.zero_grad()
        losses["total_loss"].backward()
        opt.step()
        history.append(losses["total_loss"].item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) / 5 < 0.75 * sum(history[:5]) / 5, history


def test_perfect_predictions_give_zero_iou_loss_and_k_of_ten():
    """Every anchor predicting exactly the gt box: IoU 1 everywhere, so dynamic k = sum of top-10 IoUs = 10."""
    grid, stride = make_grid([(16, 16), (8, 8), (4, 4)])
    gt = torch.tensor([60.0, 64.0, 80.0, 70.0])  # cx, cy, w, h
    logits = torch.full((1, len(grid), 5 + 2), -4.0)
    logits[0, :, :2] = gt[:2] / stride[:, None] - grid
    logits[0, :, 2:4] = torch.log(gt[2:] / stride[:, None])
    targets = torch.tensor([[[1.0, *gt.tolist()]]])
    losses = yolox_loss(logits, grid, stride, targets, num_classes=2)
    assert losses["num_fg"] == 10
    assert losses["iou_loss"].abs() < 1e-5
    losses_l1 = yolox_loss(logits, grid, stride, targets, num_classes=2, use_l1=True)
    assert losses_l1["l1_loss"].abs() < 1e-4  # raw regressions equal the L1 targets
