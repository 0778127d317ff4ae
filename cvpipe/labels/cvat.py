"""The queues as a CVAT for images 1.1 XML file (CVAT: Actions > Upload annotations > CVAT 1.1).

Each image with an entry carries its current labels (attribute `cvpipe` = "label", with the ann id) and the
model's proposals (`cvpipe` = "proposal"); a comment in each <image> and <box> says what to check.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from cvpipe.data.schema import DetectionDataset

from .labelstudio import issue_text


def _labels_meta(class_names: list[str]) -> ET.Element:
    meta = ET.Element("meta")
    labels = ET.SubElement(ET.SubElement(meta, "task"), "labels")
    for name in class_names:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        attrs = ET.SubElement(ET.SubElement(label, "attributes"), "attribute")
        for key, value in (("name", "cvpipe"), ("mutable", "False"), ("input_type", "select"),
                           ("default_value", "label"), ("values", "label\nproposal")):
            ET.SubElement(attrs, key).text = value
    return meta


def _box(parent: ET.Element, name: str, xyxy, kind: str, note: str) -> None:
    x1, y1, x2, y2 = (f"{float(v):.2f}" for v in xyxy)
    box = ET.SubElement(parent, "box", label=name, xtl=x1, ytl=y1, xbr=x2, ybr=y2, occluded="0", z_order="0",
                        source="auto" if kind == "proposal" else "manual")
    ET.SubElement(box, "attribute", name="cvpipe").text = kind
    box.set("group_id", "0")
    if note:
        box.append(ET.Comment(note.replace("--", "-")))


def write_cvat(ds: DetectionDataset, queues: dict[str, pd.DataFrame], top: int, path: Path) -> int:
    """Write the first `top` entries of every queue; returns the number of images written."""
    names = ds.class_names
    label_of = {int(r.category_id): int(r.label) for r in ds.categories.itertuples() if int(r.label) >= 0}
    entries = pd.concat([q.head(top) for q in queues.values()], ignore_index=True)
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(_labels_meta(names))
    images = ds.images.set_index("image_id")
    anns = ds.annotations[ds.annotations["iscrowd"] == 0]
    for n, (image_id, group) in enumerate(entries.groupby("image_id", sort=True)):
        img = images.loc[int(image_id)]
        el = ET.SubElement(root, "image", id=str(n), name=str(img["blob"]), width=str(int(img["width"])),
                           height=str(int(img["height"])))
        el.append(ET.Comment(" | ".join(issue_text(e, names) for e in group.to_dict("records")).replace("--", "-")))
        for a in anns[anns["image_id"] == image_id].itertuples():
            if int(a.category_id) in label_of:
                _box(el, names[label_of[int(a.category_id)]], [a.x, a.y, a.x + a.w, a.y + a.h], "label",
                     f"ann {int(a.ann_id)}")
        for e in group.to_dict("records"):
            if e["type"] != "duplicate" and int(e["proposal_label"]) >= 0:
                _box(el, names[int(e["proposal_label"])], [e["px1"], e["py1"], e["px2"], e["py2"]], "proposal",
                     f"{e['type']} #{int(e['rank'])}")
    ET.indent(root)
    Path(path).write_text(ET.tostring(root, encoding="unicode", xml_declaration=True), encoding="utf-8")
    return int(entries["image_id"].nunique())
