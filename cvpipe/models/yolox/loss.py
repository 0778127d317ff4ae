"""YOLOX training loss: SimOTA dynamic-k label assignment + IoU / objectness / class (/ L1) losses.

Follows the YOLOX paper and Megvii's original implementation: candidates are anchor points whose centre lies
inside a ground-truth box or within 2.5 strides of its centre; cost = class BCE + 3 * (-log IoU) (+ a large
penalty outside box-and-centre); each gt takes its k lowest-cost candidates with k = sum of its top-10 IoUs;
an anchor claimed by several gts goes to the cheapest one. All losses are summed and divided by the number of
foreground anchors in the batch; the IoU loss (1 - IoU^2) is weighted 5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

REG_WEIGHT = 5.0
CENTER_RADIUS = 2.5
IOU_COST_WEIGHT = 3.0
OUTSIDE_COST = 1e5
TOPK_IOU = 10


def pairwise_iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [len(a), len(b)] of cx,cy,w,h boxes."""
    tl = torch.max(a[:, None, :2] - a[:, None, 2:] / 2, b[None, :, :2] - b[None, :, 2:] / 2)
    br = torch.min(a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2)
    inter = (br - tl).clamp(min=0).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / (union + 1e-16)


def iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two [K, 4] cx,cy,w,h box sets."""
    tl = torch.max(a[:, :2] - a[:, 2:] / 2, b[:, :2] - b[:, 2:] / 2)
    br = torch.min(a[:, :2] + a[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2)
    inter = (br - tl).clamp(min=0).prod(-1)
    return inter / (a[:, 2:].prod(-1) + b[:, 2:].prod(-1) - inter + 1e-16)


@torch.no_grad()
def simota_assign(pred_boxes, obj_logit, cls_logit, gt_boxes, gt_classes, centers, stride):
    """Assign anchors of one image to its gts.

    pred_boxes [N,4] decoded cxcywh, obj_logit [N], cls_logit [N,C], gt_boxes [G,4] cxcywh, gt_classes [G] long,
    centers [N,2] anchor-point centres in pixels, stride [N].
    Returns (fg_mask [N] bool, matched_gt [F] long, matched_iou [F]) with F = fg_mask.sum().
    """
    n = pred_boxes.shape[0]
    fg_mask = torch.zeros(n, dtype=torch.bool, device=pred_boxes.device)
    empty = (fg_mask, torch.zeros(0, dtype=torch.long, device=fg_mask.device), pred_boxes.new_zeros(0))
    cx, cy = centers[:, 0][None], centers[:, 1][None]
    gcx, gcy, gw, gh = (gt_boxes[:, i:i + 1] for i in range(4))
    in_box = (cx > gcx - gw / 2) & (cx < gcx + gw / 2) & (cy > gcy - gh / 2) & (cy < gcy + gh / 2)
    r = CENTER_RADIUS * stride[None]
    in_center = (cx > gcx - r) & (cx < gcx + r) & (cy > gcy - r) & (cy < gcy + r)
    candidate = (in_box | in_center).any(0)
    cand_idx = candidate.nonzero().squeeze(1)
    if cand_idx.numel() == 0:
        return empty
    in_both = (in_box & in_center)[:, cand_idx]

    ious = pairwise_iou_cxcywh(gt_boxes, pred_boxes[cand_idx])  # [G, A]
    iou_cost = -torch.log(ious + 1e-8)
    # class cost: BCE between sqrt(cls * obj) and the one-hot gt class, summed over classes; computed as the
    # all-negative sum plus a correction at the gt class so no [G, A, C] tensor is built
    p = (cls_logit[cand_idx].float().sigmoid() * obj_logit[cand_idx, None].float().sigmoid()).sqrt()
    log_p, log_1mp = torch.log(p).clamp(min=-100), torch.log1p(-p).clamp(min=-100)
    cls_cost = -log_1mp.sum(1)[None] + (log_1mp[:, gt_classes] - log_p[:, gt_classes]).T
    cost = cls_cost + IOU_COST_WEIGHT * iou_cost + OUTSIDE_COST * (~in_both).float()

    num_cand = cost.shape[1]
    dynamic_k = torch.topk(ious, min(TOPK_IOU, num_cand), dim=1).values.sum(1).int().clamp(min=1)
    # each gt takes its dynamic_k cheapest candidates (k <= TOPK_IOU, so one small topk serves all gts)
    k_max = int(dynamic_k.max())
    cheapest_k = torch.topk(cost, k_max, dim=1, largest=False).indices  # sorted, cheapest first
    take = torch.arange(k_max, device=cost.device)[None] < dynamic_k[:, None]
    matching = torch.zeros_like(cost, dtype=torch.bool).scatter_(1, cheapest_k, take)
    shared = matching.sum(0) > 1
    if shared.any():  # an anchor claimed by several gts goes to its cheapest one
        cheapest = cost[:, shared].argmin(0)
        matching[:, shared] = False
        matching[cheapest, shared.nonzero().squeeze(1)] = True
    fg_cand = matching.any(0)
    matched_gt = matching[:, fg_cand].float().argmax(0)
    matched_iou = ious[matched_gt, fg_cand.nonzero().squeeze(1)]
    fg_mask[cand_idx[fg_cand]] = True
    return fg_mask, matched_gt, matched_iou


def _assign_targets(targets, pred_boxes, obj_logit, cls_logit, grid, stride, centers, num_classes: int,
                    use_l1: bool):
    """Per image, SimOTA: (foreground masks [N], class targets (IoU-weighted one-hot), box targets, L1 targets)."""
    fg_masks, cls_targets, reg_targets, l1_targets = [], [], [], []
    for b in range(pred_boxes.shape[0]):
        gt = targets[b][targets[b].abs().sum(-1) > 0]
        if gt.shape[0] == 0:
            fg_masks.append(torch.zeros(pred_boxes.shape[1], dtype=torch.bool, device=pred_boxes.device))
            continue
        gt_classes, gt_boxes = gt[:, 0].long(), gt[:, 1:5]
        if gt_classes.min() < 0 or gt_classes.max() >= num_classes:
            raise ValueError(f"target labels must be in [0, {num_classes}), got {gt_classes.tolist()}")
        fg, matched_gt, matched_iou = simota_assign(pred_boxes[b].detach(), obj_logit[b].detach(),
                                                    cls_logit[b].detach(), gt_boxes, gt_classes, centers, stride)
        fg_masks.append(fg)
        cls_targets.append(F.one_hot(gt_classes[matched_gt], num_classes).float() * matched_iou[:, None])
        box_t = gt_boxes[matched_gt]
        reg_targets.append(box_t)
        if use_l1:
            st, g = stride[fg][:, None], grid[fg]
            l1_targets.append(torch.cat([box_t[:, :2] / st - g, torch.log(box_t[:, 2:] / st + 1e-8)], 1))
    return fg_masks, cls_targets, reg_targets, l1_targets


def yolox_loss(logits: torch.Tensor, grid: torch.Tensor, stride: torch.Tensor, targets: torch.Tensor,
               num_classes: int, use_l1: bool = False) -> dict[str, torch.Tensor]:
    """logits [B,N,5+C] (raw reg, obj logit, cls logits), grid [N,2], stride [N], targets [B,M,5] =
    (label, cx, cy, w, h) in input pixels with all-zero padding rows.

    Returns total_loss, iou_loss (already x5), obj_loss, cls_loss, l1_loss (0 unless use_l1) and num_fg
    (foreground anchors in the batch, a float tensor for logging).
    """
    if targets.dim() != 3 or targets.shape[-1] != 5:
        raise ValueError(f"targets must be [B, M, 5] (label, cx, cy, w, h), got {tuple(targets.shape)}")
    batch = logits.shape[0]
    if targets.shape[0] != batch:
        raise ValueError(f"targets batch {targets.shape[0]} != images batch {batch}")
    targets = targets.to(logits.device, torch.float32)
    logits = logits.float()
    s = stride[:, None]
    reg_raw, obj_logit, cls_logit = logits[..., :4], logits[..., 4], logits[..., 5:]
    pred_boxes = torch.cat([(reg_raw[..., :2] + grid) * s, torch.exp(reg_raw[..., 2:4]) * s], -1)
    centers = (grid + 0.5) * s

    fg_masks, cls_targets, reg_targets, l1_targets = _assign_targets(
        targets, pred_boxes, obj_logit, cls_logit, grid, stride, centers, num_classes, use_l1)
    fg_mask = torch.stack(fg_masks)  # [B, N]
    num_fg_total = fg_mask.sum()
    norm = num_fg_total.clamp(min=1).float()
    zero = logits.new_zeros(()) + 0.0 * logits.sum()  # a 0 that keeps the graph connected (no foreground)
    obj_loss = F.binary_cross_entropy_with_logits(obj_logit, fg_mask.float(), reduction="sum") / norm
    if num_fg_total > 0:
        iou = iou_cxcywh(pred_boxes[fg_mask], torch.cat(reg_targets))
        iou_loss = REG_WEIGHT * (1 - iou ** 2).sum() / norm
        cls_loss = F.binary_cross_entropy_with_logits(cls_logit[fg_mask], torch.cat(cls_targets),
                                                      reduction="sum") / norm
        l1_loss = (reg_raw[fg_mask] - torch.cat(l1_targets)).abs().sum() / norm if use_l1 else zero
    else:
        iou_loss = cls_loss = l1_loss = zero
    total = iou_loss + obj_loss + cls_loss + l1_loss
    return {"total_loss": total, "iou_loss": iou_loss, "obj_loss": obj_loss, "cls_loss": cls_loss,
            "l1_loss": l1_loss, "num_fg": num_fg_total.float().detach()}
