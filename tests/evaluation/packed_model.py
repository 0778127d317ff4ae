"""A packed `model` entity dir for tests, made from Megvii's YOLOX-Nano ONNX without torch: the raw graph gets
the YOLOX decode appended (as an exported cvpipe model has it), so Predictor.from_dir serves it as is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .helpers import DEV, NANO_ONNX

SIZE = (416, 416)


def decoded_nano_onnx(dst: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cvpipe.vision import make_grid

    m = onnx.load(str(NANO_ONNX))
    g = m.graph
    raw_name = g.output[0].name
    grid, stride = make_grid(SIZE)
    g.initializer.extend([numpy_helper.from_array(grid[None], "dec_grid"),
                          numpy_helper.from_array(stride[None], "dec_stride")])
    for name, vals in (("s0", [0]), ("s2", [2]), ("s4", [4]), ("send", [1 << 30]), ("axis", [2])):
        g.initializer.append(numpy_helper.from_array(np.asarray(vals, np.int64), f"dec_{name}"))
    g.node.extend([
        helper.make_node("Slice", [raw_name, "dec_s0", "dec_s2", "dec_axis"], ["dec_xy"]),
        helper.make_node("Slice", [raw_name, "dec_s2", "dec_s4", "dec_axis"], ["dec_wh"]),
        helper.make_node("Slice", [raw_name, "dec_s4", "dec_send", "dec_axis"], ["dec_rest"]),
        helper.make_node("Add", ["dec_xy", "dec_grid"], ["dec_xy_g"]),
        helper.make_node("Mul", ["dec_xy_g", "dec_stride"], ["dec_cxcy"]),
        helper.make_node("Exp", ["dec_wh"], ["dec_wh_e"]),
        helper.make_node("Mul", ["dec_wh_e", "dec_stride"], ["dec_wh_px"]),
        helper.make_node("Concat", ["dec_cxcy", "dec_wh_px", "dec_rest"], ["decoded"], axis=2),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("decoded", TensorProto.FLOAT, [1, 3549, 85]))
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def write_packed_model(model_dir: Path, gt: dict, run_id: str = "nano-test-run",
                       test_image: str = "000000000139.jpg", score_thr: float = 0.3) -> Path:
    """model.onnx (decoded outputs) + model.json + test_image.jpg + reference.json (the Predictor's output)."""
    from cvpipe.inference.predictor import Predictor
    from cvpipe.vision import decode_image

    model_dir.mkdir(parents=True)
    decoded_nano_onnx(model_dir / "model.onnx")
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    meta = {"input_size": list(SIZE), "class_names": [c["name"] for c in cats], "category_ids": [c["id"] for c in cats],
            "run_id": run_id, "score_thr": score_thr, "nms_thr": 0.65, "max_det": 100}
    (model_dir / "model.json").write_text(json.dumps(meta))
    src = DEV / "images" / test_image
    if not src.is_file():  # the bundled sample: a crowded scene (people, a tie, a backpack)
        src = DEV / "images" / "000000000389.jpg"
    shutil.copyfile(src, model_dir / "test_image.jpg")
    pred = Predictor.from_dir(model_dir)
    data = (model_dir / "test_image.jpg").read_bytes()
    image = decode_image(data)
    ref = {"detections": pred.to_json(pred.predict(image)),
           "image": {"width": image.shape[1], "height": image.shape[0]}, "model": {"run_id": run_id}}
    (model_dir / "reference.json").write_text(json.dumps(ref))
    return model_dir
