"""A corpus of more than 50 kinds of bad input sent over HTTP to a real `bentoml serve` of the packed .bento:
every one gets a 4xx with {"error": ...}, none a 5xx, and the worker that answered them is the same process
afterwards and still predicts correctly (issue 16 item 3)."""

from __future__ import annotations

import io
import socket
import struct
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cvpipe.serving.process import ServiceProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "production"))
from test_fuzz_decoder import SEEDS, png_header  # noqa: E402

MAX_BODY = 2_000_000


def _mutations() -> dict[str, bytes]:
    """Per format: the file cut in half, and its header bytes scrambled."""
    out = {}
    for name, data in SEEDS.items():
        if name.startswith(("png_90", "png_144", "ppm_bad", "ppm_huge", "png_deflate")):
            out[name] = data
            continue
        out[f"{name} truncated"] = data[: max(1, len(data) // 2)]
        scrambled = bytearray(data)
        for i in range(4, min(len(scrambled), 40), 3):
            scrambled[i] ^= 0xA5
        out[f"{name} header scrambled"] = bytes(scrambled)
    return out


def _image_bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    bodies = {**_mutations(),
              "random bytes": rng.bytes(5000), "html": b"<html><body>hello</body></html>", "zeros": b"\0" * 4096,
              "jpeg SOI only": b"\xff\xd8", "jpeg SOI+EOI": b"\xff\xd8\xff\xd9", "png signature only": b"\x89PNG\r\n\x1a\n",
              "png 0x0": png_header(0, 0), "png 1x100000000": png_header(1, 100_000_000),
              "png 30000x30000": png_header(30000, 30000), "gif header only": b"GIF89a\xff\xff\xff\xff",
              "bmp negative height": b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHH", 40, 10, -2**31, 1, 24),
              "tiff endless IFD loop": b"II*\x00\x08\x00\x00\x00" + b"\x01\x00" + struct.pack("<HHII", 256, 4, 1, 10) + b"\x08\x00\x00\x00",
              "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "pdf": b"%PDF-1.4\n%%EOF",
              "zip": b"PK\x03\x04" + b"\0" * 26}
    return bodies


def _http_cases(jpeg: bytes) -> dict[str, dict]:
    return {
        "multipart without boundary": {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
        "multipart unterminated": {"content": b'--xx\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
                                   "headers": {"content-type": "multipart/form-data; boundary=xx"}},
        "multipart part without headers": {"content": b"--xx\r\nabc\r\n--xx--\r\n",
                                           "headers": {"content-type": "multipart/form-data; boundary=xx"}},
        "multipart wrong field": {"files": {"picture": ("a.jpg", jpeg, "image/jpeg")}},
        "multipart empty image": {"files": {"image": ("a.jpg", b"", "image/jpeg")}},
        "multipart image as a URL string (SSRF)": {"data": {"image": "http://169.254.169.254/latest/meta-data"},
                                                   "files": {"other": ("x", b"x")}},
        "multipart filename with NUL": {"files": {"image": ("a\0b.jpg", b"notanimage", "image/jpeg")}},
        "multipart filename 5000 chars": {"files": {"image": ("a" * 5000 + ".jpg", b"notanimage", "image/jpeg")}},
        "multipart 40 fields": {"data": {f"f{i}": "x" for i in range(40)}, "files": {"image": ("a.jpg", jpeg)}},
        "json body with a URL (SSRF)": {"json": "http://127.0.0.1:1/secret"},
        "json object": {"json": {"image": "aGVsbG8="}},
        "text/plain": {"content": b"hello", "headers": {"content-type": "text/plain"}},
        "empty body": {"content": b""},
        "score_thr abc": {"content": jpeg, "params": {"score_thr": "abc"}},
        "score_thr nan": {"content": jpeg, "params": {"score_thr": "nan"}},
        "score_thr inf": {"content": jpeg, "params": {"score_thr": "inf"}},
        "score_thr -1": {"content": jpeg, "params": {"score_thr": "-1"}},
        "score_thr 2 in form": {"files": {"image": ("a.jpg", jpeg)}, "data": {"score_thr": "2"}},
        "body over the limit": {"content": b"\xff\xd8" + b"\0" * (MAX_BODY + 10)},
    }


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        return s.recv(200)


@pytest.fixture(scope="module")
def server(packed, tmp_path_factory):
    archive = packed["bento"] / packed["summary"]["bento"]
    with ServiceProcess(archive, bentoml_home=tmp_path_factory.mktemp("home"),
                        env={"CVPIPE_MAX_BODY_BYTES": str(MAX_BODY)}) as svc:
        yield svc


def test_corpus_of_bad_inputs_gets_4xx_and_the_worker_lives(server, packed):
    jpeg = next(packed["model"].glob("test_image.*")).read_bytes()
    bodies, cases = _image_bodies(), _http_cases(jpeg)
    assert len(bodies) + len(cases) >= 50
    answers: dict[str, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        pid = client.get("/info").json()["pid"]
        for name, body in bodies.items():
            r = client.post("/predict", content=body, headers={"content-type": "image/jpeg"})
            answers[f"raw {name}"] = r.status_code
            r = client.post("/predict", files={"image": ("x", body, "application/octet-stream")})
            answers[f"multipart {name}"] = r.status_code
            assert "error" in r.json() or r.status_code == 200
        for name, kwargs in cases.items():
            try:
                answers[name] = client.post("/predict", **kwargs).status_code
            except httpx.RemoteProtocolError:  # the server may close an over-limit upload early
                answers[name] = 413
        answers["GET /predict"] = client.get("/predict").status_code
        assert client.get("/info").json()["pid"] == pid  # the same worker: nothing crashed it
        ok = client.post("/predict", files={"image": ("t.jpg", jpeg, "image/jpeg")})
    for head, name in [(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", "bad content-length"),
                       (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", "huge content-length")]:
        line = raw_request(server.port, head).split(b"\r\n", 1)[0]
        answers[name] = int(line.split()[1])
    server_errors = {k: v for k, v in answers.items() if v >= 500}
    assert not server_errors, server_errors
    valid = {k for k, v in answers.items() if v == 200}  # a mutation may still be a valid image
    assert all(k.startswith(("raw ", "multipart ")) for k in valid), valid
    assert len([v for v in answers.values() if 400 <= v < 500]) >= 50
    for name in ("score_thr nan", "body over the limit", "multipart wrong field", "json body with a URL (SSRF)",
                 "raw png_144mpx_header", "raw ppm_bad_header", "huge content-length"):
        assert 400 <= answers[name] < 500, (name, answers[name])
    assert answers["body over the limit"] == 413 and answers["huge content-length"] == 413
    assert answers["raw png_90mpx_header"] == 413 and answers["raw png_144mpx_header"] == 413
    assert ok.status_code == 200 and ok.json() == packed_reference(packed)


def packed_reference(packed) -> dict:
    import json

    return json.loads((packed["model"] / "reference.json").read_text())
