"""findings.json: one finding per line, each exactly as `json.dumps(f, default=str)` writes it, with or without
json's C encoder (write_findings builds that encoder once instead of once per finding)."""

from __future__ import annotations

import json
from json import encoder

import numpy as np
import pytest

from cvpipe.data.validate import read_findings, write_findings

FINDINGS = [{"step": "data_prep", "rule": "out_of_image", "action": "fixed", "image_id": 3, "ann_id": np.int64(7),
             "detail": "box xywh [1.5, -2.0, 3e-09, 10.0] outside the 'é' \"q\"\n image \u2028"},
            {"step": "data_load", "rule": "missing_image", "action": "recorded", "image_id": None, "ann_id": None,
             "detail": float("nan")}]


@pytest.mark.parametrize("accelerated", [True, False])
def test_each_line_is_what_json_dumps_writes(tmp_path, monkeypatch, accelerated):
    if not accelerated:
        monkeypatch.setattr(encoder, "c_make_encoder", None)
    write_findings(FINDINGS, tmp_path)
    lines = (tmp_path / "findings.json").read_text().splitlines()
    assert lines == ["[", json.dumps(FINDINGS[0], default=str) + ",", json.dumps(FINDINGS[1], default=str), "]"]
    assert read_findings(tmp_path)[0]["ann_id"] == "7"  # numpy values through `default=str`, as before
