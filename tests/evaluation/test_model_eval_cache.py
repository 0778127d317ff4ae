"""model_eval's cache key includes the model its gate compares with (step `depends_on`): a promotion or
rollback by someone else makes the next run evaluate again; model_eval's own promotion of the candidate, or
a rerun with nothing changed, reuses the cached run."""

from __future__ import annotations

import pytest
from coco_data import NANO_ONNX, need_data

from cvpipe.store import ArtifactStore
from cvpipe.store.hashing import file_digest
from cvpipe.store.promotion import PromotionLog, promote, rollback

OLD, CAND, OTHER = "20261124T100000000Z-aaaaaa", "20261124T110000000Z-bbbbbb", "20261124T120000000Z-cccccc"


def _pack_run(store, run_id: str) -> None:
    store.write_manifest({"run_id": run_id, "step": "model_pack", "status": "complete", "outputs": {}})


@pytest.fixture
def store(tmp_path):
    st = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="cache", cache_dir=tmp_path / "cache")
    for rid in (OLD, CAND, OTHER):
        _pack_run(st, rid)
    return st


def key(store, candidate=CAND, **params):
    from cvpipe.steps.model_eval import ModelEvalParams, reference_key

    return reference_key(ModelEvalParams(**params), store, {"model": candidate, "dataset": "d", "images": "i"})


def test_the_key_names_the_champion_compared_with(store):
    promote(store, OLD, reason="by hand", force=True)
    assert key(store) == {"reference": {"champion": OLD}}
    promote(store, OTHER, reason="by hand", force=True)
    assert key(store) == {"reference": {"champion": OTHER}}
    rollback(store)
    assert key(store) == {"reference": {"champion": OLD}}
    assert key(store, baseline="none") == {"reference": None}


def test_the_candidate_as_champion_is_compared_with_the_one_it_replaced(store):
    """What model_eval's own promotion leaves: the key it was computed with before it promoted."""
    promote(store, OLD, reason="by hand", force=True)
    before = key(store)
    promote(store, CAND, reason="as model_eval would", force=True)
    assert key(store) == before == {"reference": {"champion": OLD}}
    store.fs.rm(store.run_path("model_pack", OLD), recursive=True)  # the replaced one is gone: no champion
    no_champion = key(store)
    assert "champion" not in (no_champion["reference"] or {})


def test_without_a_champion_the_pretrained_start_by_content(store, tmp_path, monkeypatch):
    need_data()
    monkeypatch.chdir(tmp_path)  # found beside the package, keyed by content, not by where
    start = {"reference": {"pretrained_sha256": file_digest(NANO_ONNX)}}
    assert key(store) == start
    promote(store, CAND, reason="the first champion", force=True)
    assert key(store) == start  # it replaced nothing: still the start, as when it was evaluated
    assert key(store, baseline="pretrained") == start
    other = tmp_path / "other.onnx"
    other.write_bytes(b"not the nano")
    assert key(store, baseline="pretrained", pretrained=str(other)) == \
        {"reference": {"pretrained_sha256": file_digest(other)}}
    assert key(store, baseline="pretrained", pretrained=str(tmp_path / "missing.onnx")) == \
        {"reference": {"pretrained_sha256": None}}


# ---- the real step under the runner -------------------------------------------------------------------------

def _commit(store, step: str, run_id: str, dirs: dict) -> None:
    outs = {name: store.commit_entity(step, run_id, name, path) for name, path in dirs.items()}
    store.write_manifest({"run_id": run_id, "step": step, "status": "complete", "outputs": outs, "summary": {}})


@pytest.fixture(scope="module")
def eval_store(tmp_path_factory, dev_gt):
    """A store with a data_prep run (6 dev images in `test`) and two model_pack runs of the nano:
    OLD and CAND (the latest, so model_eval's candidate)."""
    from .helpers import write_dataset
    from .packed_model import write_packed_model

    need_data()
    root = tmp_path_factory.mktemp("eval_cache")
    dataset, images = write_dataset(root / "data", dev_gt, [i["id"] for i in dev_gt["images"][:6]])
    return root, dataset, images, {rid: write_packed_model(root / rid / "model", dev_gt, run_id=rid)
                                   for rid in (OLD, CAND)}


def test_model_eval_reruns_when_the_champion_changes(eval_store, tmp_path):
    from cvpipe.config import build_config
    from cvpipe.pipeline.runner import Runner

    root, dataset, images, models = eval_store
    cfg = build_config({"store": str(tmp_path / "store"), "env": "test", "pipeline": "cache",
                        "model_eval": {"resamples": 200, "worst_images": 1}})
    store = ArtifactStore.from_config(cfg)
    _commit(store, "data_prep", "20261124T090000000Z-dddddd", {"dataset": dataset, "images": images})
    for rid, model in models.items():
        _commit(store, "model_pack", rid, {"model": model})

    def run():
        return Runner(cfg, store=store).run_step("model_eval")

    first = run()  # no champion: against the pretrained start; the gate passes and promotes CAND
    assert first.manifest["summary"]["baseline"]["kind"] == "pretrained"
    assert first.manifest["depends_on"]["reference"]["pretrained_sha256"]
    decision = PromotionLog(store).events()[-1].data["decision"]  # what was compared, on which data, how
    assert decision["verdict"] == "promoted" and decision["compared"]["candidate"] == CAND
    assert decision["compared"]["reference"]["kind"] == "pretrained" and decision["bootstrap"]["seed"] == 0
    assert len(decision["data"]["digest"]) == 64 and decision["data"]["images"] == 6
    assert decision["margin"] == 0.01 and len(decision["interval"]) == 2 and "per_class" in decision
    assert run().run_id == first.run_id  # its own promotion changed nothing it compares with

    promote(store, OLD, reason="someone else's champion", force=True)
    second = run()
    assert second.run_id != first.run_id
    assert second.manifest["depends_on"] == {"reference": {"champion": OLD}}
    baseline = second.manifest["summary"]["baseline"]
    assert baseline["kind"] == "champion" and baseline["name"] == OLD
    assert run().run_id == second.run_id  # CAND promoted again (it replaced OLD): still cached

    forced = Runner(cfg, store=store, force=True).run_step("model_eval")  # what the cached run would say
    assert forced.manifest["depends_on"] == second.manifest["depends_on"]
    assert forced.manifest["summary"]["baseline"]["kind"] == "previous champion"
    assert forced.manifest["summary"]["baseline"]["name"] == OLD
