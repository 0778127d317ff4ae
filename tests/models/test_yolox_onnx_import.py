"""The nano ONNX imported into our fused model reproduces onnxruntime's outputs and detections."""

import json

import numpy as np
import pytest
import torch
from coco_data import COCO_DEV as COCO
from coco_data import NANO_ONNX as ONNX
from coco_data import need_data

from cvpipe import vision as processing
from cvpipe.models.yolox.onnx_import import conv_execution_order, load_nano_from_onnx

SIZE = (416, 416)


def val_images(n):
    images = json.loads((COCO / "annotations.json").read_text())["images"]
    names = [im["file_name"] for im in images if "/val2017/" in im.get("coco_url", "")]
    return [COCO / "images" / name for name in sorted(names)[:n]]


@pytest.fixture(scope="module")
def imported():
    need_data()  # every test of the bundled weights goes through this fixture
    return load_nano_from_onnx(ONNX)


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    need_data()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(ONNX), opts, providers=["CPUExecutionProvider"])


def test_every_conv_is_fused_and_mapped(imported):
    import onnx

    convs = conv_execution_order(imported)
    assert len(convs) == sum(node.op_type == "Conv" for node in onnx.load(str(ONNX)).graph.node)
    assert all(conv.bias is not None for _, conv in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in imported.modules())
    assert convs[0][0] == "backbone.backbone.stem.conv.conv" and convs[-1][0] == "head.obj_preds.2"


def test_raw_outputs_match_onnxruntime(imported, session):
    image = processing.read_image(val_images(1)[0])
    x, _ = processing.letterbox(image, SIZE)
    ref = session.run(None, {"images": x[None]})[0]
    imported.head.decode_in_inference = False
    try:
        with torch.no_grad():
            out32 = imported(torch.from_numpy(x[None])).numpy()
            out64 = imported.double()(torch.from_numpy(x[None]).double()).numpy()
    finally:
        imported.float()
        imported.head.decode_in_inference = True
    assert out32.shape == ref.shape == (1, 3549, 85)
    # scores (already sigmoid) agree to 1e-4; the raw box regressions sum thousands of 0..255-scaled products,
    # where float32 rounding alone (torch vs onnxruntime kernels) is a few 1e-4
    assert np.abs(out32[..., 4:] - ref[..., 4:]).max() < 1e-4
    assert np.abs(out32[..., :4] - ref[..., :4]).max() < 1e-3
    # computed exactly (float64), our graph lands within onnxruntime's own float32 error
    assert np.abs(out64 - ref).max() < 3e-4


def test_detections_match_onnx_path(imported, session):
    images = val_images(20)
    assert len(images) == 20
    total = 0
    for path in images:
        image = processing.read_image(path)
        x, r = processing.letterbox(image, SIZE)
        ref = processing.decode_raw(session.run(None, {"images": x[None]})[0][0], SIZE)
        with torch.no_grad():
            ours = imported(torch.from_numpy(x[None]))[0].numpy()
        a = processing.postprocess(ours, r, 0.25, 0.45, image_size=image.shape[:2])
        b = processing.postprocess(ref, r, 0.25, 0.45, image_size=image.shape[:2])
        assert len(a) == len(b), path.name
        assert np.array_equal(a.labels, b.labels), path.name
        assert np.abs(a.boxes - b.boxes).max(initial=0) < 0.1, path.name
        assert np.abs(a.scores - b.scores).max(initial=0) < 1e-4, path.name
        total += len(a)
    assert total > 20  # the pretrained model does find objects on real images


def test_wrong_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_nano_from_onnx(tmp_path / "missing.onnx")


def test_unfused_onnx_weights_are_trainable_and_equivalent(imported):
    from cvpipe.models.yolox import unfuse_model

    images = []
    for path in val_images(3):
        x, _ = processing.letterbox(processing.read_image(path), (256, 256))
        images.append(x)
    batch = torch.from_numpy(np.stack(images))
    plain = unfuse_model(imported)
    calibrated = unfuse_model(imported, [batch[:2]])
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    with torch.no_grad():
        ref = imported(batch)
        for model in (plain, calibrated):
            out = model.eval()(batch)
            assert (out[..., 4:] - ref[..., 4:]).abs().max() < 1e-3
            assert (out[..., :4] - ref[..., :4]).abs().max() < 0.5  # pixels
        # in train mode (batch statistics) the calibrated model stays close to the pretrained function
        calibrated.train()
        train_out = calibrated(batch[:2])
        assert (train_out[..., 4:] - ref[:2, :, 4:]).abs().mean() < 0.01


def test_load_checkpoint_accepts_the_onnx(imported):
    from cvpipe.models.yolox import build_yolox, load_checkpoint
    from cvpipe.models.yolox.checkpoints import CheckpointError

    model = build_yolox("nano", 3)
    result = load_checkpoint(model, ONNX)
    assert result.layout == "onnx" and len(result.reinitialized) == 6  # 80 -> 3 classes: cls_preds re-initialised
    assert torch.equal(model.head.reg_preds[0].weight, imported.head.reg_preds[0].weight)
    with pytest.raises(CheckpointError, match="only into YOLOX-nano"):
        load_checkpoint(build_yolox("tiny"), ONNX)
