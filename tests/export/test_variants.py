"""Packed runtime / precision variants: certificates, the budget, the model.json contract (one writer, one
reader), variant choice in Predictor.from_dir, and the building blocks (head convs, calibration reader,
box-match F1, batch-position check)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from coco_data import ANNOTATIONS, COCO_DEV, NANO_ONNX, largest_person, need_data
from step_context import run_step, step_context

from cvpipe.export.certify import ValSplit, batch_invariance, match_f1
from cvpipe.export.variants import Budget, verdict
from cvpipe.inference.packed import CONTRACT_VERSION, PackedModel, PackedModelError
from cvpipe.inference.predictor import Predictor
from cvpipe.vision import Detections, read_image


@pytest.fixture(scope="module")
def coco() -> dict:
    need_data()
    return json.loads(ANNOTATIONS.read_text())


def pack(root: Path, coco: dict, **params) -> Path:
    from cvpipe.steps.model_pack import ModelPackParams

    ctx = step_context(root, "model_pack", run_id="variants-test")
    run_step(ctx, ModelPackParams(onnx=NANO_ONNX, class_names=ANNOTATIONS, test_image=largest_person(coco)[0],
                                  bento=False, **params))
    return ctx.output("model")


@pytest.fixture(scope="module")
def packed(tmp_path_factory, coco) -> Path:
    """BYO nano packed with openvino asked for, int8 asked for too (refused: no data_prep split). openvino is
    the default by request: an automatic choice could withdraw it on this CPU, where it is slower than fp32."""
    return pack(tmp_path_factory.mktemp("variants"), coco, variants=["openvino", "int8"],
                default_variant="openvino")


def test_model_json_records_certified_variants_and_refusals(packed):
    model = PackedModel.load(packed)
    assert model.meta["contract_version"] == CONTRACT_VERSION == 2
    assert set(model.variants) == {"fp32", "openvino"} and model.default_variant in model.variants
    for variant in model.variants.values():
        cert = variant.certificate
        assert cert["batch"]["ok"] and cert["batch"]["batch_sizes"] == list(range(1, 9))
        assert cert["match"]["f1"] == 1.0 and cert["match"]["reference"] == "onnx fp32"
        assert cert["ap_val"] is None  # bring-your-own without data_prep: no val split
        assert all((packed / f).is_file() for f in variant.files)
    assert model.variants["openvino"].certificate["parity"]["max_scaled_diff"] < 1e-4
    assert "no training images" in model.refused_variants["int8"]["reason"]
    assert not (packed / "model_int8.onnx").exists()
    choice = model.meta["default_choice"]
    assert set(choice["speed"]) == {"fp32", "openvino"} and model.default_variant == "openvino"
    for name, variant in model.variants.items():  # both loads timed at pack time, in the certificate
        speed = variant.certificate["speed"]
        assert speed == choice["speed"][name] and speed["concurrency"] == 4
        assert speed["latency_ms_c1"] > 0 and speed["throughput_img_s_c4"] > 0
    assert model.variants["fp32"].certificate["speed"]["speedup_c1"] == 1.0
    assert {"model.json", "model.onnx", "model_openvino.xml", "model_openvino.bin", "model_e2e.onnx",
            "reference.json", "test_image.jpg", "README.md"} == set(model.files())


def test_every_variant_serves_the_same_boxes_with_its_own_reference(packed):
    model = PackedModel.load(packed)
    image = read_image(model.test_image)
    fp32 = Predictor.from_dir(packed, variant="fp32")
    ov = Predictor.from_dir(packed, variant="openvino")
    assert (fp32.backend, ov.backend, ov.variant) == ("onnxruntime", "openvino", "openvino")
    a, b = fp32.predict(image), ov.predict(image)
    assert len(a) == len(b) > 0 and np.abs(a.boxes - b.boxes).max() < 0.05
    assert model.reference_for("openvino")["detections"] == ov.to_json(b)
    assert model.reference_for(None) == model.reference
    default = Predictor.from_dir(packed)
    assert default.variant == model.default_variant
    assert model.reference["detections"] == default.to_json(default.predict(image))


def test_refused_or_unknown_variants_are_never_served(packed):
    with pytest.raises(PackedModelError, match="refused at pack time: not built"):
        Predictor.from_dir(packed, variant="int8")
    with pytest.raises(PackedModelError, match="not packed"):
        Predictor.from_dir(packed, variant="openvino_int8")


def test_default_whose_files_are_missing_falls_back_to_fp32(packed, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(packed, copy)
    meta = json.loads((copy / "model.json").read_text())
    PackedModel.save_card(copy, {**meta, "default_variant": "openvino"})
    (copy / "model_openvino.bin").unlink()  # e.g. a copy that carried only the fp32 files
    assert Predictor.from_dir(copy).variant == "fp32"
    with pytest.raises(PackedModelError, match="missing"):
        Predictor.from_dir(copy, variant="openvino")


@pytest.mark.parametrize("change, message", [
    ({"variants": {"fp32": {"backend": "onnxruntime", "files": ["../../etc/passwd"]}}}, "plain file name"),
    ({"variants": {"fp32": {"backend": "tensorrt", "files": ["model.onnx"]}}}, "backend"),
    ({"variants": {"openvino": {"backend": "openvino", "files": ["model_openvino.xml"]}}}, "'fp32'"),
    ({"default_variant": "int8"}, "default_variant"),
    ({"contract_version": 3}, "contract_version"),
])
def test_hostile_or_unknown_contracts_are_refused(packed, tmp_path, change, message):
    copy = tmp_path / "model"
    shutil.copytree(packed, copy)
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(PackedModelError, match=message):
        Predictor.from_dir(copy)


def test_contract_1_dirs_still_load_as_fp32(packed, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(packed, copy)
    meta = json.loads((copy / "model.json").read_text())
    for key in ("contract_version", "variants", "default_variant", "refused_variants"):
        meta.pop(key)
    (copy / "model.json").write_text(json.dumps(meta))
    assert list(PackedModel.load(copy).variants) == ["fp32"] and Predictor.from_dir(copy).variant == "fp32"


def test_int8_with_a_validation_split_is_certified_against_the_budget(tmp_path, coco):
    """INT8 on the nano, calibrated on 8 bundled images and measured on 6 others: it loses 2.25 AP points
    there (AP 0.771 vs fp32 0.793, measured on examples/coco_sample), so a 1-point budget refuses it and leaves
    no file, while its box match is perfect, so a 3-point budget would take it."""
    from cvpipe.export.variants import PackInputs, build_and_certify

    shutil.copytree(pack(tmp_path / "p", coco, variants=[]), tmp_path / "model")
    model_dir = tmp_path / "model"
    images = sorted(coco["images"], key=lambda i: i["id"])
    val_infos, calib = images[:6], [COCO_DEV / "images" / i["file_name"] for i in images[6:14]]
    ids = {i["id"] for i in val_infos}
    gt = {**coco, "images": val_infos, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    classes = PackedModel.load(model_dir).classes
    fp32 = Predictor.from_dir(model_dir, "fp32")
    match = [read_image(COCO_DEV / "images" / i["file_name"]) for i in val_infos[:4]]
    inputs = PackInputs(model_dir, list(classes.names), list(classes.category_ids), (416, 416),
                        {"score_thr": 0.25, "nms_thr": 0.45, "max_det": 300}, match[0], match,
                        [fp32.predict(im) for im in match], "onnx fp32",
                        ValSplit(gt, COCO_DEV / "images", classes), calib)
    accepted, refused = build_and_certify(["int8"], inputs, Budget(max_ap_drop=1.0), tmp_path / "scratch")
    assert accepted["fp32"]["certificate"]["ap_val"] > 0.1
    int8 = (accepted.get("int8") or refused["int8"])["certificate"]
    assert int8["precision"] == "int8" and int8["ap_val"] is not None and "ap_drop_points" in int8
    assert int8["batch"]["ok"], int8["batch"]
    assert "int8" not in accepted and not (model_dir / "model_int8.onnx").exists()
    assert refused["int8"]["reason"].startswith("AP ") and "> 1.0" in refused["int8"]["reason"]
    assert 1.0 < int8["ap_drop_points"] < 3.0 and int8["match"]["f1"] >= 0.9, int8
    fp32_ap = accepted["fp32"]["certificate"]["ap_val"]
    assert verdict("int8", dict(int8), fp32_ap, Budget(max_ap_drop=3.0)) is None


def test_verdict_applies_the_budget():
    ok_batch = {"ok": True}
    cert = {"batch": ok_batch, "ap_val": 0.290, "match": {"f1": 0.95, "reference": "pytorch"}}
    assert verdict("int8", dict(cert), 0.300, Budget(max_ap_drop=1.0)) is None  # exactly 1 point: within
    assert verdict("int8", {**cert, "ap_val": 0.2925}, 0.300, Budget(max_ap_drop=1.0)) is None
    assert "drop 1.50 points" in verdict("int8", {**cert, "ap_val": 0.285}, 0.300, Budget(max_ap_drop=1.0))
    assert "F1" in verdict("int8", {**cert, "ap_val": 0.3, "match": {"f1": 0.5, "reference": "pytorch"}}, 0.3,
                           Budget())
    assert "no validation split" in verdict("int8", {**cert, "ap_val": None}, None, Budget())
    assert "batch" in verdict("openvino", {"batch": {"ok": False, "detail": "x"}}, None, Budget())
    assert "differ" in verdict("openvino", {"batch": ok_batch, "parity": {"max_scaled_diff": 1e-2}}, None, Budget())


def _det(boxes, labels, scores=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.linspace(0.9, 0.5, len(boxes)).astype(np.float32) if scores is None else np.asarray(scores, np.float32)
    return Detections(boxes, scores, np.asarray(labels, np.int64))


def test_match_f1():
    ref = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])]
    assert match_f1(ref, ref)["f1"] == 1.0
    assert match_f1([_det([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 0])], ref)["f1"] == 0.5  # one wrong class
    assert match_f1([_det([[5, 5, 15, 15]], [0])], [_det([[0, 0, 10, 10]], [0])])["f1"] == 0.0  # IoU 0.14
    assert match_f1([_det([], [])], [_det([], [])])["f1"] == 1.0


def test_batch_invariance_catches_a_result_that_depends_on_its_position():
    images = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]

    def honest(batch):
        return [_det([[0, 0, 10 + im[0, 0, 0], 10]], [0]) for im in batch]

    def leaky(batch):  # the position in the batch shifts the box
        return [_det([[0, 0, 10 + im[0, 0, 0] + pos, 10]], [0]) for pos, im in enumerate(batch)]

    assert batch_invariance(honest, images)["ok"]
    bad = batch_invariance(leaky, images)
    assert not bad["ok"] and "differ" in bad["detail"]


def test_head_output_convs_are_the_nano_prediction_convs():
    from cvpipe.export.quantize import head_output_convs

    proto = onnx.load(str(NANO_ONNX))
    names = head_output_convs(proto)
    convs = {n.name: n for n in proto.graph.node if n.op_type == "Conv"}
    assert len(names) == 9  # box, objectness, class x 3 levels
    assert all([a.ints for a in convs[n].attribute if a.name == "kernel_shape"][0] == [1, 1] for n in names)


def test_calibration_reads_through_the_vision_core(tmp_path, coco):
    from cvpipe.export.quantize import _LetterboxReader
    from cvpipe.vision import letterbox

    good = largest_person(coco)[0]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    reader = _LetterboxReader("images", [tmp_path / "bad.jpg", good], (416, 416))
    first = reader.get_next()
    assert np.array_equal(first["images"][0], letterbox(read_image(good), (416, 416))[0])
    assert reader.get_next() is None
    assert "cv2" not in (Path(__file__).parents[2] / "cvpipe/export/quantize.py").read_text()


def test_serving_modules_stay_torch_free():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import cvpipe.inference.runtimes, cvpipe.inference.packed, cvpipe.inference.predictor\n"
            "from cvpipe.inference.runtimes import open_runtime\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def _speed(c1: float, c4: float) -> dict:
    return {"speedup_c1": c1, "speedup_throughput": c4, "concurrency": 4}


def _accepted(*names: str) -> dict:
    return {n: {"files": [f"{n}.x"], "certificate": {}} for n in names}


def test_default_is_chosen_on_the_load_that_matters_and_slower_variants_are_withdrawn():
    from cvpipe.export.variants import choose_default

    table = {"fp32": _speed(1.0, 1.0), "openvino": _speed(1.6, 0.9), "openvino_int8": _speed(1.3, 2.2),
             "int8": _speed(0.8, 0.85)}

    def timer(names, inputs, concurrency):
        return {n: table[n] for n in names}

    names = ("fp32", "openvino", "openvino_int8", "int8")
    accepted = _accepted(*names)
    accepted["int8"]["certificate"]["int8_kernels"] = {"int8_convs": 73, "float_convs": 40, "convs": 113,
                                                       "layout_transposes": 63, "quantize_steps": 90}
    default, choice, slower = choose_default(accepted, None, Budget(), load="throughput", timer=timer)
    assert default == "openvino_int8" and choice["load"] == "throughput"
    assert accepted["openvino"]["certificate"]["speed"]["speedup_c1"] == 1.6  # both loads in every certificate
    assert list(slower) == ["int8"] and "0.8x" in slower["int8"] and "73 of 113" in slower["int8"]
    assert choose_default(_accepted(*names), None, Budget(), load="latency", timer=timer)[0] == "openvino"
    # asked for by name: the default, never withdrawn, even where it is slower
    assert choose_default(_accepted(*names), None, Budget(), "int8", timer=timer)[::2] == ("int8", {})
    # nothing clearly faster: fp32
    assert choose_default(_accepted("fp32", "openvino"), None, Budget(), load="throughput", timer=timer)[0] == "fp32"


def test_openvino_compiles_one_unpinned_stream_per_concurrent_caller(tmp_path):
    """One stream serialises the callers and, compiled for latency, pins each to the first CPU (measured:
    docs/runtimes.md); one stream per caller thread, up to the usable CPUs, and no pinning."""
    from cvpipe.inference.runtimes import OpenVinoRuntime, onnx_to_openvino, usable_cpus

    need_data()
    xml = onnx_to_openvino(NANO_ONNX, tmp_path / "nano.xml")
    rt = OpenVinoRuntime(xml, intra_op_threads=1, concurrency=2)
    assert rt.compiled.get_property("ENABLE_CPU_PINNING") is False
    assert rt.streams == min(2, usable_cpus()) >= 1
    assert OpenVinoRuntime(xml, concurrency=1).streams == 1


def test_int8_convs_fuse_even_when_the_export_shares_their_bias(tmp_path, coco):
    """torch.onnx.export stores equal biases once, behind Identity nodes; ONNX Runtime then leaves the convs
    float between quantize / dequantize steps. The quantizer gives each its own copy: every conv runs int8."""
    from onnx import TensorProto, helper, numpy_helper

    from cvpipe.export.quantize import ort_int8_kernels, quantize_onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.zeros(8, np.float32), "shared_bias")]
    nodes, x = [], "images"
    for i, cin in enumerate((3, 8, 8)):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (8, cin, 3, 3)).astype(np.float32), f"w{i}"))
        bias = "shared_bias" if i == 0 else f"b{i}"  # as torch exports it: the first user reads it directly
        nodes += [helper.make_node("Identity", ["shared_bias"], [bias], name=f"id{i}")] if i else []
        nodes += [helper.make_node("Conv", [x, f"w{i}", bias], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sigmoid{i}"),  # SiLU, as YOLOX
                  helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"r{i}"], name=f"mul{i}")]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                              [1, 3, 32, 32])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 8, 32, 32])], inits)
    src = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    out = quantize_onnx(src, tmp_path / "int8.onnx", "static", [largest_person(coco)[0]], (32, 32), keep_float=[])
    kernels = ort_int8_kernels(out)
    assert (kernels["int8_convs"], kernels["float_convs"]) == (3, 0), kernels
