"""Functional checks of a running cvpipe model service over REST (used by model_test).

Each check returns a `Check` (name, passed, detail) instead of raising, so that one report lists them all.
"""

from __future__ import annotations

import mimetypes
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from cvpipe.inference.matching import match_detections  # noqa: F401 - re-exported for model_test
from cvpipe.inference.packed import PackedModel
from cvpipe.vision import decode_image


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def reference_detections(ref) -> list[dict]:
    """The detections list of a reference / predict response ({"detections": [...]} or a bare list)."""
    if isinstance(ref, dict):
        ref = ref.get("detections")
    if not isinstance(ref, list):
        raise ValueError("expected a list of detections or a dict with 'detections'")
    return ref


def find_test_image(model: PackedModel) -> Path:
    if model.test_image is None or not model.test_image.is_file():
        raise FileNotFoundError(f"the packed model {model.dir} has no test image")
    return model.test_image


def image_part(path_or_name: str | Path, data: bytes) -> dict:
    name = Path(path_or_name).name
    return {"image": (name, data, mimetypes.guess_type(name)[0] or "application/octet-stream")}


def truncated_jpeg(image_bytes: bytes) -> bytes:
    """The first half of a JPEG encoding of the image (a JPEG cut off in transfer)."""
    ok, enc = cv2.imencode(".jpg", decode_image(image_bytes), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("could not encode the test image as JPEG")
    data = enc.tobytes()
    return data[: len(data) // 2]


def _json(resp: httpx.Response):
    try:
        return resp.json()
    except ValueError:
        return None


def check_service(client: httpx.Client, model: PackedModel | Path, run_id: str | None, min_iou: float,
                  score_tol: float) -> tuple[list[Check], dict]:
    """All functional checks. Returns the checks and the reference detections (for the load test's check)."""
    packed = model if isinstance(model, PackedModel) else PackedModel.load(model)
    checks: list[Check] = []
    test_image = find_test_image(packed)
    image_bytes = test_image.read_bytes()
    reference = packed.reference
    if reference is None:
        raise FileNotFoundError(f"the packed model {packed.dir} has no reference.json")

    r = client.post("/test_data")
    same = r.status_code == 200 and r.content == image_bytes
    checks.append(Check("test_data returns the packed test image", same,
                        f"HTTP {r.status_code}, {len(r.content)} bytes (packed: {len(image_bytes)} bytes, "
                        f"{'identical' if same else 'different'})"))

    r = client.post("/test_result")
    got = _json(r)
    checks.append(Check("test_result returns the packed reference", r.status_code == 200 and got == reference,
                        f"HTTP {r.status_code}, " + ("equal to reference.json" if got == reference
                                                     else "differs from reference.json")))

    r = client.post("/predict", files=image_part(test_image, image_bytes))
    body = _json(r)
    if r.status_code == 200 and isinstance(body, dict):
        ok, detail = match_detections(reference_detections(body), reference_detections(reference), min_iou, score_tol)
        h, w = decode_image(image_bytes).shape[:2]
        size = body.get("image", {})
        if (size.get("width"), size.get("height")) != (w, h):
            ok, detail = False, f"{detail}; reported image size {size} but the image is {w}x{h}"
    else:
        ok, detail = False, f"HTTP {r.status_code}: {r.text[:300]}"
    checks.append(Check("predict on the test image matches the reference", ok, detail))

    r = client.post("/info")
    info = _json(r) or {}
    ok = r.status_code == 200 and run_id is not None and info.get("version") == run_id
    checks.append(Check("info reports the packed run id", ok,
                        f"HTTP {r.status_code}, version {info.get('version')!r}, packed run {run_id!r}"))

    bad: list[tuple[str, dict[str, Any]]] = [
           ("empty body", {"content": b""}),
           ("empty image file", {"files": image_part("empty.jpg", b"")}),
           ("garbage bytes", {"files": image_part("garbage.jpg", np.random.default_rng(0).bytes(2048))}),
           ("truncated JPEG", {"files": image_part("truncated.jpg", truncated_jpeg(image_bytes))})]
    for what, kwargs in bad:
        r = client.post("/predict", **kwargs)
        alive = _alive(client)
        checks.append(Check(f"predict rejects {what} with 4xx and stays up", 400 <= r.status_code < 500 and alive,
                            f"HTTP {r.status_code}: {r.text[:160]!r}; service {'alive' if alive else 'DOWN'}"))
    return checks, reference


def _alive(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False
