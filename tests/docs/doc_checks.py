"""Checks of what the docs say a block prints (`<!-- docs-test: check NAME -->` before the block): a block that
runs but shows something else than its text describes fails the docs test."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx


@dataclass
class DocContext:
    work: Path  # the scratch copy of the repository the examples run in
    env: dict[str, str]
    port: int  # where the docs' served model listens (their 3000, moved)


def json_objects(output: str) -> list[Any]:
    """Every JSON value printed one after another (curl adds no newline between responses)."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while (i := next((k for k in range(i, len(output)) if output[k] in "{["), -1)) >= 0:
        try:
            value, i = decoder.raw_decode(output, i)
            values.append(value)
        except json.JSONDecodeError:
            i += 1
    return values


def _champion(ctx: DocContext) -> str | None:
    res = subprocess.run(["cvpipe", "promotions", "-c", "configs/example.yaml", "--json"], cwd=ctx.work,
                         env=ctx.env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)["champion"]


def _live_run(ctx: DocContext) -> str:
    return httpx.get(f"http://127.0.0.1:{ctx.port}/info", timeout=10).json()["run_id"]


def _served_model_moves_before(ctx: DocContext) -> dict:
    return {"champion": _champion(ctx), "served": _live_run(ctx)}


def _served_model_moves_after(ctx: DocContext, before: dict, output: str) -> None:
    """README step 6: the new model is promoted, and the `curl /info` that follows shows it being served."""
    champion = _champion(ctx)
    assert before["served"] == before["champion"], before
    assert champion != before["champion"], f"the retrained model was not promoted (champion {champion})"
    info = json_objects(output)[-1]
    assert info["run_id"] == champion, f"/info shows {info['run_id']}, the champion is {champion}"


def _predict_json_after(ctx: DocContext, before: None, output: str) -> None:
    """README step 4: predict's JSON as the text after the block describes it (form field, then raw bytes with
    score_thr=0.5), then /info of the same model."""
    form, raw, info = json_objects(output)[:3]
    for result in (form, raw):
        assert set(result) >= {"detections", "image", "model"} and result["model"]["run_id"] == info["run_id"]
        assert result["image"] == {"width": 640, "height": 480}, result["image"]  # BloodImage_00007.jpg
        for d in result["detections"]:
            assert len(d["box"]) == 4 and {"score", "category_id", "category_name"} <= set(d), d
    assert form["detections"] and all(d["score"] >= 0.5 for d in raw["detections"])


Before = Callable[[DocContext], Any]
After = Callable[[DocContext, Any, str], None]
CHECKS: dict[str, tuple[Before, After]] = {
    "served-model-moves": (_served_model_moves_before, _served_model_moves_after),
    "predict-json": (lambda ctx: None, _predict_json_after),
}
