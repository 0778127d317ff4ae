import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cvpipe.cli.main import app

runner = CliRunner()


def test_predict_with_a_packed_model_dir_json_and_vis(packed, person_image, tmp_path):
    r = runner.invoke(app, ["predict", str(person_image[0]), "--model", str(packed["model"]), "--json",
                            "--save-vis", str(tmp_path / "vis")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out[0]["detections"] and any(d["category_name"] == "person" for d in out[0]["detections"])
    assert (tmp_path / "vis" / f"{person_image[0].stem}_det.jpg").stat().st_size > 1000


def test_predict_onnx_and_checkpoint_agree(packed, person_image, tmp_path):
    from cvpipe.models.yolox import save_checkpoint
    from cvpipe.models.yolox.onnx_import import load_nano_from_onnx

    from .conftest import NANO_ONNX

    save_checkpoint(load_nano_from_onnx(NANO_ONNX), tmp_path / "nano.pt", meta={"input_size": [416, 416]})
    a = runner.invoke(app, ["predict", str(person_image[0]), "-m", str(NANO_ONNX), "--json"])
    b = runner.invoke(app, ["predict", str(person_image[0]), "-m", str(tmp_path / "nano.pt"), "--json"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    da, db = json.loads(a.stdout)[0]["detections"], json.loads(b.stdout)[0]["detections"]
    assert [d["category_name"] for d in da] == [d["category_name"] for d in db] and da
    assert all(abs(x - y) < 0.5 for p, q in zip(da, db) for x, y in zip(p["box"], q["box"]))


def test_predict_bad_image_exits_nonzero(packed, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    r = runner.invoke(app, ["predict", str(bad), "-m", str(packed["model"]), "--json"])
    assert r.exit_code == 1 and "not an image" in r.stdout


def test_serve_help_and_missing_run(tmp_path):
    r = runner.invoke(app, ["serve", "--help"])
    assert r.exit_code == 0 and "/predict" in r.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\nenv: dev\npipeline: p\n")
    r = runner.invoke(app, ["serve", "--config", str(cfg)])
    assert r.exit_code != 0 and "no complete model_pack run" in r.output


def test_serve_checks_settings_before_starting(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\nenv: dev\npipeline: p\n")
    monkeypatch.setenv("CVPIPE_ADMIN_TOKEN", "a")  # an inherited, too short token: refused, never used
    r = runner.invoke(app, ["serve", "-c", str(cfg)])
    assert r.exit_code == 2 and "CVPIPE_ADMIN_TOKEN" in r.output and "16" in r.output, r.output
    monkeypatch.delenv("CVPIPE_ADMIN_TOKEN")
    monkeypatch.setenv("MY_TOKEN", "short")
    r = runner.invoke(app, ["serve", "-c", str(cfg), "--admin-token-env", "MY_TOKEN"])
    assert r.exit_code == 2 and "$MY_TOKEN" in r.output, r.output
    r = runner.invoke(app, ["serve", "-c", str(cfg), "--max-body-bytes", "10"])
    assert r.exit_code == 2 and "max-body-bytes" in r.output.replace("\n", ""), r.output


RUN = "20261124T100000000Z-aaaaaa"


@pytest.fixture
def tampered_store(packed, tmp_path):
    """A store holding the packed model as model_pack run RUN, then one byte of its reference.json changed and
    one byte appended to its .bento archive."""
    from cvpipe.store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "store"), env="dev", pipeline="p")
    outs = {e: store.commit_entity("model_pack", RUN, e, packed[e]) for e in ("model", "bento")}
    store.write_manifest({"run_id": RUN, "step": "model_pack", "status": "complete", "outputs": outs, "summary": {}})
    target = Path(store.entity_path("model_pack", RUN, "model")) / "reference.json"
    target.write_bytes(target.read_bytes().replace(b"person", b"persoN", 1))
    [archive] = Path(store.entity_path("model_pack", RUN, "bento")).glob("*.bento")
    archive.write_bytes(archive.read_bytes() + b"\0")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\nenv: dev\npipeline: p\n")
    return cfg


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_tampered_run_is_refused_in_one_line(tampered_store, person_image, command):
    args = (["predict", str(person_image[0]), "--model", RUN] if command == "predict" else ["serve", RUN]) + \
        ["-c", str(tampered_store)]
    r = runner.invoke(app, args)
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert f"refusing model_pack run {RUN}" in text, r.output
    assert ("reference.json" if command == "predict" else ".bento") in text, r.output
    assert "Traceback" not in r.output and r.output.count("error:") == 1
