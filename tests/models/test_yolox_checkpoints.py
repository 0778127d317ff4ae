import logging

import pytest
import torch

from cvpipe.models.yolox import build_yolox, fuse_model, load_checkpoint, save_checkpoint
from cvpipe.models.yolox.checkpoints import CheckpointError, mmdet_key_map

# Module names of mmdetection 3.x's CSPDarknet / YOLOXPAFPN / YOLOXHead (from its source), as an independent
# check on the renaming: each of these must appear among the mapped keys.
MMDET_EXPECTED = [
    "backbone.stem.conv.conv.weight",
    "backbone.stage1.0.depthwise_conv.conv.weight",
    "backbone.stage1.1.main_conv.bn.running_mean",
    "backbone.stage1.1.short_conv.conv.weight",
    "backbone.stage1.1.final_conv.bn.weight",
    "backbone.stage1.1.blocks.0.conv1.conv.weight",
    "backbone.stage1.1.blocks.0.conv2.pointwise_conv.conv.weight",
    "backbone.stage4.1.conv1.conv.weight",  # SPPBottleneck
    "backbone.stage4.2.blocks.0.conv2.depthwise_conv.bn.bias",
    "neck.reduce_layers.0.conv.weight",
    "neck.reduce_layers.1.bn.running_var",
    "neck.top_down_blocks.1.main_conv.conv.weight",
    "neck.downsamples.1.pointwise_conv.conv.weight",
    "neck.bottom_up_blocks.0.final_conv.conv.weight",
    "neck.out_convs.2.conv.weight",
    "bbox_head.multi_level_cls_convs.0.1.depthwise_conv.conv.weight",
    "bbox_head.multi_level_reg_convs.2.0.pointwise_conv.bn.weight",
    "bbox_head.multi_level_conv_cls.1.weight",
    "bbox_head.multi_level_conv_reg.0.bias",
    "bbox_head.multi_level_conv_obj.2.weight",
]


def randomized(scale="nano", num_classes=4, seed=0):
    """A model whose every tensor (BN stats too) is random, so a round trip proves each tensor's placement."""
    torch.manual_seed(seed)
    model = build_yolox(scale, num_classes)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.dtype.is_floating_point:
                v.copy_(torch.rand_like(v) + 0.1)
            else:
                v.fill_(seed + 7)
    return model


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_mmdet_names_cover_mmdetection_modules():
    names = set(mmdet_key_map(build_yolox("nano")).values())
    missing = [k for k in MMDET_EXPECTED if k not in names]
    assert not missing
    assert len(names) == len(build_yolox("nano").state_dict())  # one-to-one


@pytest.mark.parametrize("layout", ["cvpipe", "megvii", "mmdet"])
def test_round_trip_each_layout(tmp_path, layout):
    src = randomized()
    meta = {"class_names": ["a", "b", "c", "d"], "category_ids": [1, 2, 3, 5], "input_size": [416, 416], "epoch": 3}
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    path = save_checkpoint(src, tmp_path / f"{layout}.pth", meta, layout=layout, optimizer=opt)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if layout == "mmdet":
        assert "state_dict" in raw
        assert all(k.startswith(("backbone.", "neck.", "bbox_head.")) for k in raw["state_dict"])
        assert raw["meta"]["CLASSES"] == meta["class_names"]
    else:
        assert set(raw["model"]) == set(src.state_dict())
        assert ("meta" in raw) == (layout == "cvpipe")
    dst = build_yolox("nano", 4)
    result = load_checkpoint(dst, path)
    assert result.layout == layout
    assert result.reinitialized == []
    assert result.optimizer is not None and "param_groups" in result.optimizer
    if layout == "cvpipe":
        assert result.meta["class_names"] == meta["class_names"] and result.meta["scale"] == "nano"
    assert_same(src, dst)


def test_mmdet_layout_with_ema_and_module_prefix(tmp_path):
    src = randomized(seed=1)
    names = mmdet_key_map(src)
    sd = {"module." + names[k]: v for k, v in src.state_dict().items()}
    sd["module.ema_backbone_stem_conv_conv_weight"] = torch.zeros(3)  # mmdet 2.x EMA buffer
    dst = build_yolox("nano", 4)
    result = load_checkpoint(dst, {"state_dict": sd, "meta": {"epoch": 300}}, layout="mmdet")
    assert result.ignored == ["ema_backbone_stem_conv_conv_weight"]
    assert_same(src, dst)


def test_class_count_mismatch_reinitialises_only_cls_preds(tmp_path, caplog):
    src = randomized(num_classes=80)
    path = save_checkpoint(src, tmp_path / "coco.pth", {}, layout="megvii")
    dst = build_yolox("nano", 3)
    with caplog.at_level(logging.WARNING):
        result = load_checkpoint(dst, path)
    assert "re-initialising the class predictors" in caplog.text
    assert sorted(result.reinitialized) == sorted(f"head.cls_preds.{i}.{p}"
                                                  for i in range(3) for p in ("weight", "bias"))
    assert dst.head.cls_preds[0].weight.shape[0] == 3
    assert torch.allclose(torch.sigmoid(dst.head.cls_preds[0].bias), torch.full((3,), 0.01))
    s, d = src.state_dict(), dst.state_dict()
    for k in d:
        if not k.startswith("head.cls_preds."):
            assert torch.equal(s[k], d[k]), k


def test_wrong_scale_lists_keys(tmp_path):
    path = save_checkpoint(randomized("nano"), tmp_path / "nano.pth", {})
    with pytest.raises(CheckpointError, match="missing|shape"):
        load_checkpoint(build_yolox("s", 4), path)
    path = save_checkpoint(randomized("tiny"), tmp_path / "tiny.pth", {})
    with pytest.raises(CheckpointError, match="shape mismatch") as e:
        load_checkpoint(build_yolox("s", 4), path)
    assert "backbone.backbone.stem.conv.conv.weight" in str(e.value)


def test_corrupt_and_unknown_checkpoints(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(build_yolox("nano"), bad)
    other = tmp_path / "other.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(CheckpointError, match="neither YOLOX layout"):
        load_checkpoint(build_yolox("nano"), other)
    torch.save({"epoch": 3}, other)
    with pytest.raises(CheckpointError, match="unknown checkpoint structure"):
        load_checkpoint(build_yolox("nano"), other)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(build_yolox("nano"), tmp_path / "nope.pth")


def test_unfused_weights_into_fused_model(tmp_path):
    src = build_yolox("nano", 4)
    src.train()
    with torch.no_grad():
        src(torch.rand(2, 3, 64, 64) * 255)
    src.eval()
    path = save_checkpoint(src, tmp_path / "m.pth", {})
    fused = build_yolox("nano", 4, fused=True)
    load_checkpoint(fused, path)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        assert torch.allclose(fused.eval()(x), src(x), atol=1e-3)
    # and fused weights round-trip into a fused model
    path2 = save_checkpoint(fuse_model(src), tmp_path / "f.pth", {})
    fused2 = build_yolox("nano", 4, fused=True)
    load_checkpoint(fused2, path2)
    assert_same(fused, fused2)
    with pytest.raises(CheckpointError, match="fused"):
        load_checkpoint(build_yolox("nano", 4), path2)


@pytest.mark.parametrize("scale,layout", [("nano", "mmdet"), ("tiny", "megvii"), ("s", "cvpipe")])
def test_load_model_infers_architecture(tmp_path, scale, layout):
    from cvpipe.models.yolox import load_model

    src = randomized(scale, num_classes=5)
    path = save_checkpoint(src, tmp_path / "m.pth", {"class_names": list("abcde")}, layout=layout)
    model, result = load_model(path)
    assert (model.scale, model.num_classes, result.layout) == (scale, 5, layout)
    assert not model.training
    assert_same(src, model)
