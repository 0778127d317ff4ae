import hashlib
import http.server
import logging
import socket
import threading

import pytest

from cvpipe.models.yolox.weights import DEFAULT_WEIGHTS, WeightsUnavailable, resolve_weights

PAYLOAD = b"fake checkpoint bytes " * 5000


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "w.pth").write_bytes(PAYLOAD)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(www), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def refused_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused at once
    return f"http://127.0.0.1:{port}/yolox_s.pth"


def test_none_and_local_paths(tmp_path):
    assert resolve_weights(None) is None
    assert resolve_weights("none") is None and resolve_weights("None") is None
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert resolve_weights(str(f)) == f
    assert resolve_weights(f"file://{f}") == f
    with pytest.raises(FileNotFoundError):
        resolve_weights(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="SHA-256"):
        resolve_weights(f, sha256="0" * 64)


def test_default_weights_cover_all_scales():
    assert set(DEFAULT_WEIGHTS) == {"nano", "tiny", "s", "m", "l", "x"}
    assert DEFAULT_WEIGHTS["s"].endswith("yolox_s_8x8_300e_coco_20211121_095711-4592a793.pth")


def test_download_checksum_and_cache(server, tmp_path):
    cache = tmp_path / "cache"
    good = hashlib.sha256(PAYLOAD).hexdigest()
    path = resolve_weights(f"{server}/w.pth", cache_dir=cache, sha256=good)
    assert path == cache / "w.pth" and path.read_bytes() == PAYLOAD
    # cached: served again even when the server is gone
    assert resolve_weights(f"{refused_url().rsplit('/', 1)[0]}/w.pth", cache_dir=cache, sha256=good) == path
    # wrong checksum: error, and neither the file nor a temp file is left behind
    other = tmp_path / "cache2"
    with pytest.raises(ValueError, match="SHA-256 mismatch"):
        resolve_weights(f"{server}/w.pth", cache_dir=other, sha256="0" * 64)
    assert list(other.iterdir()) == []


def test_unreachable_url_falls_back_or_raises(tmp_path, caplog):
    url = refused_url()
    with caplog.at_level(logging.WARNING):
        assert resolve_weights(url, cache_dir=tmp_path) is None
    assert url in caplog.text and "by hand" in caplog.text
    with pytest.raises(WeightsUnavailable, match="yolox_s.pth"):
        resolve_weights(url, cache_dir=tmp_path, required=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_on_server_is_unavailable(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_weights(f"{server}/nope.pth", cache_dir=tmp_path) is None
    assert "404" in caplog.text
