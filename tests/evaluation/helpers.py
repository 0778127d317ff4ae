"""Shared test helpers: the COCO dev data, YOLOX-Nano detections, datasets in cvpipe's layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from coco_data import COCO_DEV as DEV  # noqa: F401 - re-exported for the tests
from coco_data import NANO_ONNX


def nano_detections(gt: dict, image_ids: list[int], score_thr: float = 0.001) -> list[dict]:
    """COCO results of Megvii's YOLOX-Nano ONNX on some dev images, through cvpipe's numpy processing
    (independent of the Predictor, which these tests do not need)."""
    import onnxruntime as ort

    from cvpipe.vision import decode_raw, letterbox, postprocess

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(NANO_ONNX), opts, providers=["CPUExecutionProvider"])
    cat_ids = sorted(c["id"] for c in gt["categories"])
    by_id = {i["id"]: i for i in gt["images"]}
    out = []
    for iid in image_ids:
        img = cv2.imread(str(DEV / "images" / by_id[iid]["file_name"]))
        x, r = letterbox(img, (416, 416))
        raw = sess.run(None, {"images": x[None]})[0][0]
        det = postprocess(decode_raw(raw, (416, 416)), r, score_thr, 0.65, 100, img.shape[:2])
        for (x1, y1, x2, y2), s, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
            out.append({"image_id": iid, "category_id": cat_ids[label], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    return out


def perturbed_gt_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Detections made from GT boxes: jittered, some dropped, some with a wrong class, random scores."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    out = []
    for a in gt["annotations"]:
        if a["iscrowd"] or rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        cat = a["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        box = [x + rng.normal() * 0.08 * w, y + rng.normal() * 0.08 * h, w * (1 + 0.1 * rng.normal()),
               h * (1 + 0.1 * rng.normal())]
        out.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for img in gt["images"][::3]:  # pure false positives
        out.append({"image_id": img["id"], "category_id": int(rng.choice(cat_ids)),
                    "bbox": [10.0, 10.0, 50.0, 40.0], "score": float(rng.random())})
    return out


def write_dataset(root: Path, gt: dict, image_ids: list[int], split: str = "test") -> tuple[Path, Path]:
    """A data_prep-like `dataset` dir (all COCO categories labelled in id order) and `images` dir (files
    named by content hash) holding the given dev images, all in `split`."""
    import hashlib

    from cvpipe.data.schema import DetectionDataset

    images_dir, dataset_dir = root / "images", root / "dataset"
    images_dir.mkdir(parents=True)
    keep = set(image_ids)
    rows = []
    for i in gt["images"]:
        if i["id"] not in keep:
            continue
        data = (DEV / "images" / i["file_name"]).read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (images_dir / f"{digest}.jpg").write_bytes(data)
        rows.append({"image_id": i["id"], "file_name": i["file_name"], "width": i["width"], "height": i["height"],
                     "digest": digest, "blob": f"{digest}.jpg", "source": "coco_dev", "split": split})
    anns = [{"ann_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"], "x": a["bbox"][0],
             "y": a["bbox"][1], "w": a["bbox"][2], "h": a["bbox"][3], "area": a["area"], "iscrowd": a["iscrowd"]}
            for a in gt["annotations"] if a["image_id"] in keep]
    cats = [{"category_id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", ""), "label": k}
            for k, c in enumerate(sorted(gt["categories"], key=lambda c: c["id"]))]
    DetectionDataset.build(rows, anns, cats).save(dataset_dir)
    return dataset_dir, images_dir
