"""Rebuild examples/coco_sample from the real COCO 2017 dev set (../shared/data/coco_real/dev).

Keeps only images whose Flickr licence allows redistribution (COCO licence ids 4 = CC BY 2.0,
5 = CC BY-SA 2.0, 7 = no known copyright restrictions), copies them byte for byte, keeps their original
annotation records and all 80 categories, and writes ATTRIBUTION.md. Deterministic.

    python examples/make_coco_sample.py [SOURCE_DIR] [TARGET_DIR]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REDISTRIBUTABLE = {4, 5, 7}


def make_sample(src: Path, dst: Path) -> dict:
    coco = json.loads((src / "annotations.json").read_text())
    images = sorted((im for im in coco["images"] if im["license"] in REDISTRIBUTABLE), key=lambda im: im["id"])
    keep = {im["id"] for im in images}
    anns = sorted((a for a in coco["annotations"] if a["image_id"] in keep), key=lambda a: a["id"])
    (dst / "images").mkdir(parents=True, exist_ok=True)
    for im in images:
        shutil.copyfile(src / "images" / im["file_name"], dst / "images" / im["file_name"])
    out = {"info": coco["info"], "licenses": coco["licenses"], "images": images, "annotations": anns,
           "categories": coco["categories"]}
    (dst / "annotations.json").write_text(json.dumps(out))
    licences = {lic["id"]: lic for lic in coco["licenses"]}
    lines = [
        "# Attribution: examples/coco_sample",
        "",
        f"{len(images)} images from COCO 2017 (train2017 and val2017) with their original instance annotations.",
        "",
        "- Annotations: © COCO Consortium, CC BY 4.0 — \"Microsoft COCO: Common Objects in Context\", Lin et al.,",
        "  ECCV 2014, https://cocodataset.org (COCO 2017, annotations CC BY 4.0).",
        "- Images: each keeps the Flickr licence its author chose (below). Only licences that allow redistribution",
        "  were kept (CC BY 2.0, CC BY-SA 2.0, no known copyright restrictions). Files are unmodified.",
        "- Rebuilt by `examples/make_coco_sample.py` from the project's copy of the real COCO files.",
        "",
        "| file | COCO split | licence | flickr_url |",
        "| --- | --- | --- | --- |",
    ]
    for im in images:
        lic = licences[im["license"]]
        split = "val2017" if "/val2017/" in im.get("coco_url", "") else "train2017"
        lines.append(f"| {im['file_name']} | {split} | [{lic['name']}]({lic['url']}) | {im.get('flickr_url', '')} |")
    (dst / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n")
    return {"images": len(images), "annotations": len(anns)}


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else here.parent.parent / "shared/data/coco_real/dev"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else here / "coco_sample"
    print(make_sample(source, target))
