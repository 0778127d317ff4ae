import cv2
import numpy as np
import onnx
import pytest
import torch
from coco_data import COCO_DEV, NANO_ONNX, need_data

from cvpipe.export.onnx import (
    ParityError,
    append_decode,
    append_e2e,
    check_onnx_parity,
    check_parity,
    export_onnx,
    simplify,
)
from cvpipe.inference.predictor import Predictor, make_session
from cvpipe.inference.torch_predictor import TorchPredictor
from cvpipe.models.yolox import build_yolox
from cvpipe.vision import letterbox

IMAGES = COCO_DEV / "images"


def real_images(n=2):
    files = sorted(IMAGES.glob("*.jpg"))[:n]
    if len(files) < n:
        need_data()
        pytest.fail(f"fewer than {n} images in {IMAGES}")
    return [cv2.imread(str(f)) for f in files]


@pytest.fixture(scope="module")
def nano():
    need_data()
    from cvpipe.models.yolox.onnx_import import load_nano_from_onnx

    return load_nano_from_onnx(NANO_ONNX)


def test_random_nano_128_parity_and_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = build_yolox("nano", num_classes=3).eval()
    path = export_onnx(model, tmp_path / "m.onnx", (128, 160))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 140, 3), dtype=np.uint8)
    res = check_parity(TorchPredictor(model, (128, 160), score_thr=0.3), path, image)
    assert res["max_scaled_diff"] < 1e-4
    # dynamic batch: two different images in one call equal one at a time
    sess = make_session(path)
    x = np.stack([letterbox(rng.integers(0, 255, (90, 70, 3), dtype=np.uint8), (128, 160))[0] for _ in range(2)])
    both = sess.run(None, {"images": x})[0]
    assert both.shape == (2, 16 * 20 + 8 * 10 + 4 * 5, 8)
    assert np.allclose(both[1:], sess.run(None, {"images": x[1:]})[0], atol=1e-4)


def test_parity_check_catches_a_different_model(tmp_path):
    torch.manual_seed(0)
    model = build_yolox("nano", num_classes=3).eval()
    path = export_onnx(model, tmp_path / "m.onnx", (128, 128))
    with torch.no_grad():
        model.head.reg_preds[0].bias += 0.5  # the PyTorch model no longer matches the exported graph
    with pytest.raises(ParityError, match="differ"):
        check_parity(TorchPredictor(model, (128, 128)), path, np.full((128, 128, 3), 90, np.uint8))


def test_real_nano_decoded_and_e2e_graphs_match_pytorch(nano, tmp_path):
    dec = export_onnx(nano, tmp_path / "model.onnx", (416, 416))
    e2e = tmp_path / "model_e2e.onnx"
    onnx.save(append_e2e(onnx.load(str(dec)), score_thr=0.1), str(e2e))
    total = 0
    for image in real_images(2):
        res = check_parity(TorchPredictor(nano, (416, 416), score_thr=0.1), dec, image, e2e_path=e2e)
        assert res["max_scaled_diff"] < 1e-4
        assert "not comparable" not in res["detections_detail"] + res["e2e_detail"]
        assert res["e2e_detections"] == res["detections"]
        total += res["detections"]
    assert total > 0
    assert [o.name for o in onnx.load(str(e2e)).graph.output] == ["detections"]


def test_e2e_rows_are_sorted_and_capped(nano, tmp_path):
    dec = export_onnx(nano, tmp_path / "model.onnx", (416, 416))
    e2e = tmp_path / "e2e.onnx"
    onnx.save(append_e2e(onnx.load(str(dec)), score_thr=0.01, max_det=5), str(e2e))
    x, _ = letterbox(real_images(1)[0], (416, 416))
    rows = make_session(e2e).run(None, {"images": x[None]})[0]
    assert rows.shape == (5, 7)
    assert (np.diff(rows[:, 5]) <= 0).all() and (rows[:, 0] == 0).all()


def test_byo_raw_onnx_gets_decode_nodes(nano, tmp_path):
    decoded = append_decode(onnx.load(str(NANO_ONNX)), (416, 416))
    path = tmp_path / "byo.onnx"
    onnx.save(decoded, str(path))
    image = real_images(1)[0]
    res = check_onnx_parity(NANO_ONNX, path, image, (416, 416), reference_raw=True)
    assert res["max_scaled_diff"] < 1e-6
    # and the torch model imported from that ONNX agrees with it, final detections included
    assert check_parity(TorchPredictor(nano, (416, 416)), path, image)["detections"] > 0
    with pytest.raises(ValueError, match="input_size"):
        append_decode(onnx.load(str(NANO_ONNX)), (320, 320))


def test_exported_nano_from_onnx_matches_megvii_graph(nano, tmp_path):
    path = export_onnx(nano, tmp_path / "model.onnx", (416, 416))
    res = check_onnx_parity(NANO_ONNX, path, real_images(1)[0], (416, 416), reference_raw=True)
    assert res["max_scaled_diff"] < 1e-4


def test_simplify_is_kept_only_with_parity(nano, tmp_path):
    import onnxslim  # noqa: F401 - the dev extra installs it; simplify() would quietly skip without it

    path = export_onnx(nano, tmp_path / "model.onnx", (416, 416))
    image = real_images(1)[0]
    before = Predictor(path, [str(i) for i in range(80)], None, (416, 416)).predict(image)
    res = simplify(path, image, (416, 416))
    assert res["simplified"] and res["max_scaled_diff"] < 1e-4
    after = Predictor(path, [str(i) for i in range(80)], None, (416, 416)).predict(image)
    assert np.allclose(before.boxes, after.boxes, atol=1e-2)
