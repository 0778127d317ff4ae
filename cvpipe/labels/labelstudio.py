"""Label Studio: the queues as tasks with pre-annotations, a small REST client, and the reading of its JSON
export back into labels, refusing anything that does not fit the data version.

A task is one image. Its pre-annotation ("predictions") holds the image's current labels (region ids
`ann-<ann_id>`) plus the model's counter-proposal (`proposal-<type>-<rank>`); the annotator keeps, edits or
deletes regions and submits. Coming back, a task's latest submitted annotation replaces that image's labels;
images without an annotation keep theirs. Images of the data version that have no label at all get the model's
predictions as pre-annotations, so they can be labelled from a start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import pandas as pd

from cvpipe.data.schema import DetectionDataset

FROM_NAME, TO_NAME = "label", "image"
EDGE_TOLERANCE = 0.5  # percent of the image side a box may stick out (rounding in Label Studio's editor)


class ImportRejected(ValueError):
    """A labelling tool's export that cannot be applied to the data version: every problem is listed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:20]
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"the export was refused ({len(problems)} problem(s)); nothing was written:\n  "
                         + "\n  ".join(shown) + more)


def label_config(class_names: list[str]) -> str:
    """The labelling interface: the image, the issue text, one rectangle label per class."""
    labels = "".join(f"<Label value={quoteattr(n)}/>" for n in class_names)
    return (f'<View><Header value="$cvpipe_issue"/><Image name="{TO_NAME}" value="$image"/>'
            f'<RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}</RectangleLabels></View>')


def region(box_xyxy, name: str, width: int, height: int, region_id: str) -> dict:
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return {"id": region_id, "from_name": FROM_NAME, "to_name": TO_NAME, "type": "rectanglelabels",
            "original_width": int(width), "original_height": int(height), "image_rotation": 0,
            "value": {"x": 100 * x1 / width, "y": 100 * y1 / height, "width": 100 * (x2 - x1) / width,
                      "height": 100 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": [name]}}


def issue_text(e: dict, names: list[str]) -> str:
    label = names[int(e["label"])] if int(e["label"]) >= 0 else ""
    proposal = names[int(e["proposal_label"])] if int(e["proposal_label"]) >= 0 else ""
    what = {"missing": f"missing {proposal}? (green proposal: keep it to add it)",
            "spurious": f"label {label} (ann {int(e['ann_id'])}) has nothing under it: delete it?",
            "wrong_class": f"label {label} (ann {int(e['ann_id'])}) looks like {proposal}: keep one of the two",
            "bad_location": f"label {label} (ann {int(e['ann_id'])}) looks misplaced: keep the better box",
            "duplicate": f"label {label} (ann {int(e['ann_id'])}) duplicates ann {int(e['other_ann_id'])}"}
    return f"cvpipe {e['type']} #{int(e['rank'])} (score {float(e['score']):.2f}): {what[str(e['type'])]}"


@dataclass(frozen=True)
class ExportSource:
    """What tasks point at: the data version (its run id) and how an image is reached from Label Studio."""

    run_id: str
    image_url: str = "/data/local-files/?d={blob}"  # {blob}: the file name in the images entity


def build_tasks(ds: DetectionDataset, queues: dict[str, pd.DataFrame], top: int, source: ExportSource,
                predictions: pd.DataFrame | None = None, min_score: float = 0.3) -> list[dict]:
    """One task per image with at least one of the first `top` entries of any queue, then one per unlabelled
    image (model pre-annotations at score >= min_score). Each image appears once, with all its issues."""
    names, rows = ds.class_names, ds.images.set_index("image_id")
    entries = pd.concat([q.head(top) for q in queues.values()], ignore_index=True)
    labelled = ds.annotations[ds.annotations["iscrowd"] == 0]
    label_of = {int(r.category_id): int(r.label) for r in ds.categories.itertuples() if int(r.label) >= 0}
    tasks = []
    for image_id, group in entries.groupby("image_id", sort=False):
        img = rows.loc[int(image_id)]
        w, h = int(img["width"]), int(img["height"])
        current = [region([a.x, a.y, a.x + a.w, a.y + a.h], names[label_of[int(a.category_id)]], w, h,
                          f"ann-{int(a.ann_id)}")
                   for a in labelled[labelled["image_id"] == image_id].itertuples() if int(a.category_id) in label_of]
        proposals = [region([e["px1"], e["py1"], e["px2"], e["py2"]], names[int(e["proposal_label"])], w, h,
                            f"proposal-{e['type']}-{int(e['rank'])}")
                     for e in group.to_dict("records")
                     if e["type"] != "duplicate" and int(e["proposal_label"]) >= 0 and np.isfinite(e["px1"])]
        issues = " | ".join(issue_text(e, names) for e in group.to_dict("records"))
        tasks.append(_task(int(image_id), img, source, issues, current + proposals,
                           float(group["score"].max()), list(group["type"].unique())))
    tasks += _unlabelled_tasks(ds, rows, source, predictions, min_score, {t["data"]["cvpipe_image_id"] for t in tasks})
    return tasks


def _task(image_id: int, img: pd.Series, source: ExportSource, issue: str, result: list[dict], score: float,
          queues: list[str]) -> dict:
    return {"data": {"image": source.image_url.format(blob=img["blob"]), "cvpipe_image_id": image_id,
                     "cvpipe_blob": img["blob"], "cvpipe_run": source.run_id, "cvpipe_queues": queues,
                     "cvpipe_issue": issue},
            "predictions": [{"model_version": "cvpipe-labels", "score": round(score, 4), "result": result}]}


def _unlabelled_tasks(ds: DetectionDataset, rows: pd.DataFrame, source: ExportSource, predictions, min_score: float,
                      done: set[int]) -> list[dict]:
    if predictions is None:
        return []
    names = ds.class_names
    labelled_ids = set(ds.annotations["image_id"])
    tasks = []
    for image_id in sorted(set(rows.index) - labelled_ids - done):
        img = rows.loc[image_id]
        p = predictions[(predictions["image_id"] == image_id) & (predictions["score"] >= min_score)]
        result = [region([r.x1, r.y1, r.x2, r.y2], names[int(r.label)], int(img["width"]), int(img["height"]),
                         f"model-{i}") for i, r in enumerate(p.itertuples())]
        tasks.append(_task(int(image_id), img, source, "cvpipe: unlabelled image, model pre-annotations", result,
                           float(p["score"].max()) if len(p) else 0.0, ["unlabelled"]))
    return tasks


# ---- reading an export back ----------------------------------------------------------------------------
def read_export(path: Path) -> list[dict]:
    """The tasks of a Label Studio JSON export file, or ImportRejected saying why the file is unusable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ImportRejected([f"{path}: cannot be read: {e}"]) from None
    except json.JSONDecodeError as e:
        raise ImportRejected([f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})"]) from None
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        kind = type(data).__name__
        raise ImportRejected([f"{path}: a Label Studio JSON export is a list of task objects, got {kind}"])
    return data


def latest_annotation(task: dict) -> dict | None:
    """The task's most recent submitted (not cancelled) annotation."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    return max(anns, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0)))


def corrected_boxes(tasks: list[dict], ds: DetectionDataset,
                    run_id: str | None) -> dict[int, list[tuple[str, list[float]]]]:
    """image_id -> its corrected boxes [(class name, xyxy px)] for every annotated task; ImportRejected listing
    every task that names an image outside the data version, an unknown label or a box outside its image."""
    problems: list[str] = []
    names = set(ds.class_names)
    images = ds.images.set_index("image_id")
    out: dict[int, list[tuple[str, list[float]]]] = {}
    for n, task in enumerate(tasks):
        where = f"task {task.get('id', f'#{n}')}"
        raw = task.get("data")
        data: dict = raw if isinstance(raw, dict) else {}
        image_id = data.get("cvpipe_image_id")
        if not isinstance(image_id, int) or image_id not in images.index:
            problems.append(f"{where}: image {image_id!r} ({data.get('image', '?')}) is not in this data version")
            continue
        if run_id and data.get("cvpipe_run") not in (None, run_id):
            problems.append(f"{where}: exported from data version {data.get('cvpipe_run')}, not {run_id}")
            continue
        if data.get("cvpipe_blob") not in (None, images.loc[image_id, "blob"]):
            problems.append(f"{where}: image {image_id} file {data.get('cvpipe_blob')} differs from the data version's")
            continue
        ann = latest_annotation(task)
        if ann is None:
            continue
        w, h = int(images.loc[image_id, "width"]), int(images.loc[image_id, "height"])
        out[image_id] = _boxes_of(ann, where, names, w, h, problems)
    if problems:
        raise ImportRejected(problems)
    return out


def _boxes_of(ann: dict, where: str, names: set[str], w: int, h: int, problems: list[str]) -> list:
    boxes: list[tuple[str, list[float]]] = []
    result = ann.get("result")
    if not isinstance(result, list):
        problems.append(f"{where}: annotation result is not a list")
        return boxes
    for r in result:
        if not isinstance(r, dict) or r.get("type") != "rectanglelabels":
            continue  # other controls (text, choices) carry no box
        raw = r.get("value")
        v: dict = raw if isinstance(raw, dict) else {}
        rid = r.get("id", "?")
        try:
            x, y, bw, bh = (float(v[k]) for k in ("x", "y", "width", "height"))
            label = list(v["rectanglelabels"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{where}: region {rid}: needs x, y, width, height and rectanglelabels")
            continue
        if len(label) != 1 or label[0] not in names:
            problems.append(f"{where}: region {rid}: unknown label {label!r} (the data version's classes: "
                            f"{', '.join(sorted(names)[:10])}{', ...' if len(names) > 10 else ''})")
            continue
        if abs(float(v.get("rotation") or 0)) > 1e-6:
            problems.append(f"{where}: region {rid}: rotated boxes are not supported (rotation {v.get('rotation')})")
            continue
        if not all(np.isfinite([x, y, bw, bh])) or bw <= 0 or bh <= 0 or x < -EDGE_TOLERANCE or \
                y < -EDGE_TOLERANCE or x + bw > 100 + EDGE_TOLERANCE or y + bh > 100 + EDGE_TOLERANCE:
            problems.append(f"{where}: region {rid} ({label[0]}): box x={x:.2f}% y={y:.2f}% w={bw:.2f}% "
                            f"h={bh:.2f}% is empty or outside the image")
            continue
        ox, oy = r.get("original_width"), r.get("original_height")
        if (ox is not None and int(ox) != w) or (oy is not None and int(oy) != h):
            problems.append(f"{where}: region {rid}: drawn on a {ox}x{oy} image, the data version's is {w}x{h}")
            continue
        x1, y1 = max(x, 0.0) * w / 100, max(y, 0.0) * h / 100
        x2, y2 = min(x + bw, 100.0) * w / 100, min(y + bh, 100.0) * h / 100
        boxes.append((label[0], [x1, y1, x2, y2]))
    return boxes


# ---- REST -----------------------------------------------------------------------------------------------
class LabelStudio:
    """The few REST calls the round trip needs (token auth). Errors name the call and the server's answer."""

    def __init__(self, url: str, token: str, timeout: float = 60.0):
        import httpx

        self.url = url.rstrip("/")
        self.client = httpx.Client(headers={"Authorization": f"Token {token}"}, timeout=timeout,
                                   follow_redirects=True)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            r = self.client.request(method, f"{self.url}{path}", **kwargs)
        except httpx.HTTPError as e:
            raise RuntimeError(f"Label Studio {method} {path}: {type(e).__name__}: {e}") from None
        if r.status_code >= 400:
            raise RuntimeError(f"Label Studio {method} {path}: HTTP {r.status_code}: {r.text[:300]}")
        return r.json() if r.content else None

    def create_project(self, title: str, config: str) -> int:
        return int(self.call("POST", "/api/projects", json={"title": title, "label_config": config})["id"])

    def import_tasks(self, project: int, tasks: list[dict]) -> int:
        answer = self.call("POST", f"/api/projects/{project}/import", json=tasks)
        return int((answer or {}).get("task_count", len(tasks)))

    def tasks(self, project: int) -> list[dict]:
        answer = self.call("GET", "/api/tasks", params={"project": project, "page_size": 10000})
        return answer["tasks"] if isinstance(answer, dict) else answer

    def annotate(self, task: int, result: list[dict]) -> int:
        return int(self.call("POST", f"/api/tasks/{task}/annotations", json={"result": result})["id"])

    def export(self, project: int) -> list[dict]:
        return self.call("GET", f"/api/projects/{project}/export", params={"exportType": "JSON"})
