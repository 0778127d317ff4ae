"""A corpus of bad (and valid) input sent over HTTP to a real `bentoml serve` of the packed .bento, each with ONE
expected status (issue 24 item 3):

- image bodies, each sent raw and as the multipart field `image`: every seed image of the fuzz corpus (about 35
  formats and modes), each one truncated and with its header scrambled, and hand-made garbage. The expected
  status of a body is what the decoding contract says of it, computed here in-process: it decodes -> 200, its
  header announces too many pixels (ImageTooLarge) -> 413, any other ImageDecodeError -> 400. So a 200 for a
  body the decoder refuses fails, and so does a 4xx for a valid image.
- HTTP cases (malformed multipart, wrong fields, SSRF attempts, bad score_thr, over-limit bodies, bad headers),
  each with its status written below. A connection error is a failure (an over-limit upload must read its 413).
The worker that answered everything is the same process afterwards and still predicts the reference."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from cvpipe.serving.process import ServiceProcess
from cvpipe.vision import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    ImageTooLarge,
    decode_image,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "production"))
from test_fuzz_decoder import SEEDS, png_header

MAX_BODY = 2_000_000


def _mutations() -> dict[str, bytes]:
    """Per seed: the file itself, the file cut in half, and its header bytes scrambled."""
    out = {}
    for name, data in SEEDS.items():
        out[name] = data
        out[f"{name} truncated"] = data[: max(1, len(data) // 2)]
        scrambled = bytearray(data)
        for i in range(4, min(len(scrambled), 40), 3):
            scrambled[i] ^= 0xA5
        out[f"{name} header scrambled"] = bytes(scrambled)
    return out


def image_bodies() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {**_mutations(),
            "random bytes": rng.bytes(5000), "html": b"<html><body>hello</body></html>", "zeros": b"\0" * 4096,
            "jpeg SOI only": b"\xff\xd8", "jpeg SOI+EOI": b"\xff\xd8\xff\xd9",
            "png signature only": b"\x89PNG\r\n\x1a\n",
            "png 0x0": png_header(0, 0), "png 1x100000000": png_header(1, 100_000_000),
            "png 30000x30000": png_header(30000, 30000), "gif header only": b"GIF89a\xff\xff\xff\xff",
            "bmp negative height": b"BM" + struct.pack("<IHHI", 70, 0, 0, 54)
            + struct.pack("<IiiHH", 40, 10, -2**31, 1, 24),
            "tiff endless IFD loop": b"II*\x00\x08\x00\x00\x00" + b"\x01\x00"
            + struct.pack("<HHII", 256, 4, 1, 10) + b"\x08\x00\x00\x00",
            "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "pdf": b"%PDF-1.4\n%%EOF",
            "zip": b"PK\x03\x04" + b"\0" * 26}


def expected_status(body: bytes) -> int:
    """The decoding contract's verdict on a body (the service decodes with the same limit)."""
    try:
        decode_image(body, DEFAULT_MAX_PIXELS)
    except ImageTooLarge:
        return 413
    except ImageDecodeError:
        return 400
    return 200


def http_cases(jpeg: bytes) -> dict[str, tuple[int, dict]]:
    """name -> (expected status, httpx.post keyword arguments)."""
    boundary = {"content-type": "multipart/form-data; boundary=xx"}
    return {
        "multipart without boundary": (400, {"content": b"abc", "headers": {"content-type": "multipart/form-data"}}),
        "multipart unterminated": (400, {"content": b'--xx\r\nContent-Disposition: form-data; name="image"\r\n\r\nabc',
                                         "headers": boundary}),
        "multipart part without headers": (400, {"content": b"--xx\r\nabc\r\n--xx--\r\n", "headers": boundary}),
        "multipart wrong field": (400, {"files": {"picture": ("a.jpg", jpeg, "image/jpeg")}}),
        "multipart empty image": (400, {"files": {"image": ("a.jpg", b"", "image/jpeg")}}),
        "multipart image as a URL string (SSRF)": (400, {"data": {"image": "http://169.254.169.254/latest/meta-data"},
                                                         "files": {"other": ("x", b"x")}}),
        "multipart filename with NUL": (400, {"files": {"image": ("a\0b.jpg", b"notanimage", "image/jpeg")}}),
        "multipart filename 300 chars": (400, {"files": {"image": ("a" * 300 + ".jpg", b"notanimage", "image/jpeg")}}),
        "multipart filename 5000 chars": (400, {"files": {"image": ("a" * 5000 + ".jpg", jpeg, "image/jpeg")}}),
        "multipart 40 text fields beside the image": (200, {"data": {f"f{i}": "x" for i in range(40)},
                                                            "files": {"image": ("a.jpg", jpeg)}}),
        "multipart image with a path as file name": (200, {"files": {"image": ("../../etc/passwd", jpeg)}}),
        "json body with a URL (SSRF)": (400, {"json": "http://127.0.0.1:1/secret"}),
        "json object": (400, {"json": {"image": "aGVsbG8="}}),
        "text/plain": (400, {"content": b"hello", "headers": {"content-type": "text/plain"}}),
        "empty body": (400, {"content": b""}),
        "score_thr abc": (400, {"content": jpeg, "params": {"score_thr": "abc"}}),
        "score_thr nan": (400, {"content": jpeg, "params": {"score_thr": "nan"}}),
        "score_thr inf": (400, {"content": jpeg, "params": {"score_thr": "inf"}}),
        "score_thr -1": (400, {"content": jpeg, "params": {"score_thr": "-1"}}),
        "score_thr 2 in form": (400, {"files": {"image": ("a.jpg", jpeg)}, "data": {"score_thr": "2"}}),
        "score_thr abc in form": (400, {"files": {"image": ("a.jpg", jpeg)}, "data": {"score_thr": "abc"}}),
        "body over the limit": (413, {"content": b"\xff\xd8" + b"\0" * (MAX_BODY + 10)}),
        "multipart over the limit": (413, {"files": {"image": ("a.jpg", b"\0" * (MAX_BODY + 10))}}),
        "chunked body over the limit": (413, {"content": iter([b"\0" * 500_000] * 5)}),
        "chunked valid image": (200, {"content": iter([jpeg[:1000], jpeg[1000:]])}),
    }


RAW_CASES = {  # raw HTTP requests, written whole before the answer is read: name -> (request, expected status)
    "bad content-length": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    "huge content-length": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
    "over the limit, expect 100-continue": (b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                            b"Content-Length: 5000000\r\n\r\n", 413),
    "1.5x the limit, whole body sent at once": (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n"
                                                b"\r\n" + b"\0" * 3_000_000, 413),
}


def raw_status(port: int, request: bytes) -> int | str:
    """The status a client that writes its whole request before reading reads back (curl, requests); a reset
    while writing or reading is returned as its error name."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(request)
            line = s.recv(200).split(b"\r\n", 1)[0]
        return int(line.split()[1])
    except OSError as e:
        return type(e).__name__


@pytest.fixture(scope="module")
def server(packed, tmp_path_factory):
    archive = packed["bento"] / packed["summary"]["bento"]
    with ServiceProcess(archive, bentoml_home=tmp_path_factory.mktemp("home"),
                        env={"CVPIPE_MAX_BODY_BYTES": str(MAX_BODY), "CVPIPE_BODY_TIMEOUT_S": "3"}) as svc:
        yield svc


def test_every_input_gets_its_exact_status_and_the_worker_lives(server, packed):
    jpeg = next(packed["model"].glob("test_image.*")).read_bytes()
    bodies, cases = image_bodies(), http_cases(jpeg)
    expected = {f"{how} {name}": expected_status(body) for name, body in bodies.items() for how in ("raw", "multipart")}
    expected.update({name: status for name, (status, _) in cases.items()})
    expected.update({name: status for name, (_, status) in RAW_CASES.items()})
    expected["GET /predict"] = 405
    answers: dict[str, int | str] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        pid = client.get("/info").json()["pid"]
        for name, body in bodies.items():
            for how, kwargs in (("raw", {"content": body, "headers": {"content-type": "image/jpeg"}}),
                                ("multipart", {"files": {"image": ("x", body, "application/octet-stream")}})):
                r = client.post("/predict", **kwargs)
                answers[f"{how} {name}"] = r.status_code
                assert r.status_code == 200 or "error" in r.json(), (how, name, r.text)
        for name, (_, kwargs) in cases.items():
            try:
                answers[name] = client.post("/predict", **kwargs).status_code
            except httpx.HTTPError as e:  # a reset instead of an answer is a failure too
                answers[name] = type(e).__name__
        answers["GET /predict"] = client.get("/predict").status_code
        assert client.get("/info").json()["pid"] == pid  # the same worker: nothing crashed it
        ok = client.post("/predict", files={"image": ("t.jpg", jpeg, "image/jpeg")})
    for name, (head, _) in RAW_CASES.items():
        answers[name] = raw_status(server.port, head)
    counts = {s: list(expected.values()).count(s) for s in sorted(set(expected.values()))}
    print(f"\n{len(expected)} requests, expected statuses {counts}")
    wrong = {k: (answers.get(k), v) for k, v in expected.items() if answers.get(k) != v}
    assert not wrong, f"(answer, expected) per input: {wrong}"
    assert counts[200] >= 60 and counts[400] >= 100 and counts[413] >= 8, counts  # the corpus covers all three
    assert ok.status_code == 200 and ok.json() == packed_reference(packed)


def packed_reference(packed) -> dict:
    import json

    return json.loads((packed["model"] / "reference.json").read_text())
