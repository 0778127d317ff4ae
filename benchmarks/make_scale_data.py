"""Write N real-looking JPEGs with COCO annotations for the data-at-scale benchmark (bench_data.py --scale).

Each image is a random crop (50-100 % of each side) of one of the real COCO photos in
/work/shared/data/coco_real/dev, flipped half the time, resized so its long side is 320-640 px, and re-encoded
(JPEG quality 60-92). Its boxes are the source's boxes moved by the same crop, flip and scale, clipped, and
dropped when less than a third of a box is left. Deterministic for a given --seed. Written once to a scratch
folder (not committed): about 45 kB per image, 4.5 GB for 100,000.

    .venv/bin/python benchmarks/make_scale_data.py --n 10000 --out /tmp/cvpipe-scale/10k
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

COCO_DEV = Path(os.environ.get("CVPIPE_TEST_COCO", "/work/shared/data/coco_real/dev"))
PER_FOLDER = 1000  # images per sub-folder, as large collections are usually laid out


def _boxes_by_image(coco: dict) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd"):
            out.setdefault(a["image_id"], []).append(a)
    return out


def variant(src: np.ndarray, boxes: list[dict], seed: int) -> tuple[bytes, int, int, list[tuple[int, list[float]]]]:
    """(JPEG bytes, width, height, [(category_id, xywh)]) of one crop / flip / resize / re-encode of `src`."""
    rng = np.random.default_rng(seed)
    h, w = src.shape[:2]
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = src[y0:y0 + ch, x0:x0 + cw]
    flip = bool(rng.integers(0, 2))
    if flip:
        img = img[:, ::-1]
    scale = float(rng.uniform(320, 640)) / max(cw, ch)
    out_w, out_h = max(1, round(cw * scale)), max(1, round(ch * scale))
    img = cv2.resize(np.ascontiguousarray(img), (out_w, out_h), interpolation=cv2.INTER_AREA)
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 93))])
    assert ok
    moved = []
    for a in boxes:
        bx, by, bw, bh = a["bbox"]
        x1, y1 = max(bx - x0, 0), max(by - y0, 0)
        x2, y2 = min(bx + bw - x0, cw), min(by + bh - y0, ch)
        if x2 <= x1 or y2 <= y1 or (x2 - x1) * (y2 - y1) < bw * bh / 3:
            continue
        if flip:
            x1, x2 = cw - x2, cw - x1
        moved.append((a["category_id"], [round(v * scale, 2) for v in (x1, y1, x2 - x1, y2 - y1)]))
    return jpeg.tobytes(), out_w, out_h, moved


def _write_batch(job: tuple[str, list[dict], int, list[int], str]) -> list[dict]:
    """One source photo, several output images: decoded once."""
    src_path, boxes, seed, ids, out = job
    src = cv2.imread(src_path, cv2.IMREAD_COLOR)
    if src is None:
        raise ValueError(f"{src_path}: not a readable image")
    records = []
    for i in ids:
        data, w, h, moved = variant(src, boxes, seed * 1_000_003 + i)
        name = f"{i // PER_FOLDER:04d}/{i:07d}.jpg"
        path = Path(out) / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        records.append({"id": i, "file_name": name, "width": w, "height": h, "boxes": moved})
    return records


def jobs(n: int, out: Path, seed: int, first_id: int = 1, per_job: int = 50) -> tuple[list, dict]:
    coco = json.loads((COCO_DEV / "annotations.json").read_text())
    boxes = _boxes_by_image(coco)
    sources = coco["images"]
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(sources), size=n)
    by_source: dict[int, list[int]] = {}
    for k, s in enumerate(pick):
        by_source.setdefault(int(s), []).append(first_id + k)
    todo = []
    for s, ids in sorted(by_source.items()):
        for i in range(0, len(ids), per_job):
            im = sources[s]
            todo.append((str(COCO_DEV / "images" / im["file_name"]), boxes.get(im["id"], []), seed, ids[i:i + per_job],
                         str(out)))
    return todo, coco


def generate(n: int, out: Path, seed: int = 0, workers: int = 2, first_id: int = 1) -> dict:
    """Write the images under out/images and return the COCO dict (the caller writes it)."""
    todo, coco = jobs(n, out, seed, first_id)
    images: list[dict] = []
    anns: list[dict] = []
    with ProcessPoolExecutor(workers) as pool:
        for records in pool.map(_write_batch, todo):
            for r in records:
                images.append({k: r[k] for k in ("id", "file_name", "width", "height")})
                for cat, xywh in r["boxes"]:
                    anns.append({"id": r["id"] * 100 + len(anns) % 100, "image_id": r["id"], "category_id": cat,
                                 "bbox": xywh, "area": round(xywh[2] * xywh[3], 2), "iscrowd": 0})
    images.sort(key=lambda im: im["id"])
    for k, a in enumerate(sorted(anns, key=lambda a: a["image_id"]), start=first_id * 100):
        a["id"] = k
    return {"images": images, "annotations": anns, "categories": coco["categories"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if (args.out / "annotations.json").exists():
        raise SystemExit(f"{args.out} already holds a data set; remove it first")
    t = time.perf_counter()
    coco = generate(args.n, args.out, args.seed, args.workers)
    (args.out / "annotations.json").write_text(json.dumps(coco))
    size = sum(p.stat().st_size for p in (args.out / "images").rglob("*.jpg"))
    print(json.dumps({"images": len(coco["images"]), "annotations": len(coco["annotations"]),
                      "bytes": size, "seconds": round(time.perf_counter() - t, 1), "out": str(args.out)}))


if __name__ == "__main__":
    main()
