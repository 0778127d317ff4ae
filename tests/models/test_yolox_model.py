import pytest
import torch

from cvpipe import vision as processing
from cvpipe.models.yolox import SCALES, build_yolox, fuse_model
from cvpipe.models.yolox.flops import count_flops
from cvpipe.models.yolox.head import make_grid

# Parameter counts published in Megvii's YOLOX README (millions, 80 classes) -- an independent check that the
# architecture (widths, depths, depthwise nano) matches the reference.
PUBLISHED_PARAMS_M = {"nano": 0.91, "tiny": 5.06, "s": 9.0, "m": 25.3, "l": 54.2, "x": 99.1}


def test_scales_table():
    assert set(SCALES) == set(PUBLISHED_PARAMS_M)
    assert SCALES["nano"].depthwise and not SCALES["tiny"].depthwise


def _check_scale(scale):
    torch.manual_seed(0)
    model = build_yolox(scale, num_classes=7).eval()
    params = sum(p.numel() for p in build_yolox(scale, 80).parameters()) / 1e6
    assert params == pytest.approx(PUBLISHED_PARAMS_M[scale], abs=0.05)
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        out = model(x)
    n = (64 // 8) * (96 // 8) + (64 // 16) * (96 // 16) + (64 // 32) * (96 // 32)
    assert out.shape == (1, n, 5 + 7)
    assert torch.isfinite(out).all()
    assert ((out[..., 4:] >= 0) & (out[..., 4:] <= 1)).all()
    assert (out[..., 2:4] > 0).all()


@pytest.mark.parametrize("scale", ["nano", "tiny", "s"])
def test_output_shapes_small_scales(scale):
    _check_scale(scale)


@pytest.mark.slow
@pytest.mark.parametrize("scale", ["m", "l", "x"])
def test_output_shapes_large_scales(scale):
    _check_scale(scale)


def test_unknown_scale_and_bad_input():
    with pytest.raises(ValueError, match="unknown YOLOX scale"):
        build_yolox("xl")
    model = build_yolox("nano").eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.zeros(3, 64, 64))


def test_megvii_key_names_and_init():
    model = build_yolox("nano")
    keys = set(model.state_dict())
    for k in ["backbone.backbone.stem.conv.conv.weight", "backbone.backbone.dark2.0.dconv.conv.weight",
              "backbone.backbone.dark5.1.conv1.bn.running_var", "backbone.lateral_conv0.conv.weight",
              "backbone.C3_n4.m.0.conv2.pconv.bn.weight", "head.stems.2.conv.weight",
              "head.cls_convs.0.1.dconv.conv.weight", "head.cls_preds.0.bias", "head.obj_preds.2.weight"]:
        assert k in keys, k
    bn = model.backbone.lateral_conv0.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03)
    prior = torch.sigmoid(model.head.cls_preds[0].bias)
    assert torch.allclose(prior, torch.full_like(prior, 0.01))


def test_raw_mode_matches_decoded_via_processing_decode_raw():
    torch.manual_seed(0)
    model = build_yolox("nano", 5).eval()
    x = torch.rand(2, 3, 96, 64) * 255
    with torch.no_grad():
        decoded = model(x)
        model.head.decode_in_inference = False
        raw = model(x)
    assert raw.shape == decoded.shape
    ours = processing.decode_raw(raw.numpy(), (96, 64))
    assert abs(ours - decoded.numpy()).max() < 1e-3
    grid, stride = make_grid([(12, 8), (6, 4), (3, 2)])
    g2, s2 = processing.make_grid((96, 64))
    assert (grid.numpy() == g2).all() and (stride.numpy() == s2[:, 0]).all()


def test_fuse_model_gives_same_outputs():
    torch.manual_seed(0)
    model = build_yolox("nano", 3)
    model.train()
    with torch.no_grad():  # give BN non-trivial running stats
        for _ in range(3):
            model(torch.rand(2, 3, 64, 64) * 255)
    model.eval()
    fused = fuse_model(model)
    assert fused.fused and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        a, b = model(x), fused(x)
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-4)


# GFLOPs published in Megvii's YOLOX README (nano/tiny at 416, others at 640); thop there also counts
# BN/activations, FlopCounterMode only convs, so allow a few percent
PUBLISHED_GFLOPS = {"nano": (416, 1.08), "tiny": (416, 6.45), "s": (640, 26.8), "m": (640, 73.8),
                    "l": (640, 155.6), "x": (640, 281.9)}


@pytest.mark.parametrize("scale", ["nano", "tiny", "s", pytest.param("m", marks=pytest.mark.slow),
                                   pytest.param("l", marks=pytest.mark.slow),
                                   pytest.param("x", marks=pytest.mark.slow)])
def test_flops_match_published(scale):
    size, gflops = PUBLISHED_GFLOPS[scale]
    model = build_yolox(scale)
    model.train()
    assert count_flops(model, size) / 1e9 == pytest.approx(gflops, rel=0.04)
    assert model.training  # mode restored
