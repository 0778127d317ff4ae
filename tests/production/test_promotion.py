"""The promotion log: append-only events in the store; promote / rollback / demote; only evaluated models are
promoted by hand unless forced; events of step runs that did not complete do not count; hostile contents."""

from __future__ import annotations

import json
import os
import threading

import pytest
from typer.testing import CliRunner

from cvpipe.store import ArtifactStore
from cvpipe.store.promotion import PromotionError, PromotionLog, promote, record_decision, rollback, servable_run

A, B, C = "20261124T100000000Z-aaaaaa", "20261124T110000000Z-bbbbbb", "20261124T120000000Z-cccccc"


def _run(store, step, run_id, status="complete", **extra):
    store.write_manifest({"run_id": run_id, "step": step, "status": status, "outputs": {}, **extra})


def _eval(store, run_id, model_run, passed=True, status="complete"):
    _run(store, "model_eval", run_id, status=status, inputs={"model": {"step": "model_pack", "run_id": model_run}},
         summary={"AP": 0.3, "gate": {"passed": passed, "message": "ok" if passed else "AP dropped"}})


@pytest.fixture
def store(tmp_path):
    st = ArtifactStore(str(tmp_path / "store"), env="test", pipeline="promo", cache_dir=tmp_path / "cache")
    for rid in (A, B, C):
        _run(st, "model_pack", rid)
    _eval(st, "20261124T100500000Z-e00001", A)
    _eval(st, "20261124T110500000Z-e00002", B)
    _eval(st, "20261124T120500000Z-e00003", C, passed=False)
    return st


def test_nothing_is_servable_before_a_promotion(store):
    assert servable_run(store) is None and PromotionLog(store).events() == []


def test_promote_rollback_history(store):
    promote(store, A, "first")
    promote(store, B, "better")
    assert servable_run(store).run_id == B
    ev = rollback(store, reason="B misbehaves")
    assert ev.champion == A and ev.data["previous"] == B and servable_run(store).run_id == A
    with pytest.raises(PromotionError, match="first one"):
        rollback(store)  # A was the first champion
    rollback(store, B)  # forward again by naming it
    events = PromotionLog(store).events()
    assert [e.action for e in events] == ["promote", "promote", "rollback", "rollback"]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert events[1].data["eval_run_id"] == "20261124T110500000Z-e00002" and events[1].data["metrics"]["AP"] == 0.3
    assert "@" in events[0].data["by"] and events[0].data["reason"] == "first"
    files = sorted(os.listdir(PromotionLog(store).path))
    records = [f for f in files if f.endswith(".json")]
    assert records and all(f.startswith("00000") for f in records)


def test_a_model_whose_evaluation_failed_needs_force_and_reason(store):
    with pytest.raises(PromotionError, match="did not pass"):
        promote(store, C)
    with pytest.raises(PromotionError, match="reason"):
        promote(store, C, force=True)
    ev = promote(store, C, reason="hotfix, evaluated by hand", force=True)
    assert ev.data["forced"] and servable_run(store).run_id == C


@pytest.mark.parametrize("bad", ["../../../tmp/x", f"{A}/../{B}", "latest", "", "x" * 300])
def test_run_ids_are_checked(store, bad):
    with pytest.raises((PromotionError, KeyError)):
        promote(store, bad)


def test_rollback_only_to_a_former_champion(store):
    promote(store, A)
    with pytest.raises(PromotionError, match="never champion"):
        rollback(store, B)


def test_step_decisions_count_once_their_run_completes(store):
    promote(store, A)
    running = "20261124T130000000Z-e00004"
    _run(store, "model_eval", running, status="running", host="elsewhere")
    record_decision(store, step="model_eval", step_run_id=running, model_run_id=B, passed=True,
                    promote_on_pass=True, reason="gate passed", metrics={"AP": 0.31})
    assert servable_run(store).run_id == A  # the eval run is still running: not yet
    store.write_manifest({"run_id": running, "step": "model_eval", "status": "complete", "outputs": {}})
    assert PromotionLog(store).champion_id() == B


def test_failed_step_run_never_promotes(store):
    failed = "20261124T130000000Z-e00005"
    _run(store, "model_eval", failed, status="running", host="elsewhere")
    record_decision(store, step="model_eval", step_run_id=failed, model_run_id=B, passed=True,
                    promote_on_pass=True, reason="gate passed", metrics={})
    store.write_manifest({"run_id": failed, "step": "model_eval", "status": "failed", "outputs": {}})
    assert servable_run(store) is None


def test_gate_decisions_are_kept_whole_in_the_log(store):
    """model_eval's decision record rides on the event: promoted, held and refused alike; holding or refusing
    never changes the champion (not even when the candidate is the champion re-evaluated)."""
    from cvpipe.store.promotion import history_rows

    decision = {"verdict": "held", "margin": 0.01, "interval": [-0.03, 0.02], "data": {"digest": "ab" * 32},
                "bootstrap": {"seed": 0, "resamples": 1000}, "compared": {"candidate": B}}
    promote(store, A)
    held = record_decision(store, step="model_eval", step_run_id="20261124T130000000Z-e00006", model_run_id=B,
                           passed=False, promote_on_pass=True, reason="held: not enough evidence", metrics={},
                           decision=decision)
    assert held.action == "refuse" and held.champion == A and servable_run(store).run_id == A
    again = record_decision(store, step="model_eval", step_run_id="20261124T130000000Z-e00007", model_run_id=A,
                            passed=False, promote_on_pass=True, reason="refused", metrics={},
                            decision={**decision, "verdict": "refused"})
    assert again.action == "refuse" and servable_run(store).run_id == A  # the gate does not demote
    rows = history_rows(store)
    assert rows[-2]["decision"] == decision and rows[-1]["decision"]["verdict"] == "refused"
    on_disk = PromotionLog(store).events()[-2].data["decision"]
    assert on_disk["data"]["digest"] == "ab" * 32 and on_disk["bootstrap"]["seed"] == 0


def test_model_test_failure_demotes_the_champion(store):
    promote(store, A)
    promote(store, B)
    test_run = "20261124T130000000Z-f00001"
    _run(store, "model_test", test_run)
    ev = record_decision(store, step="model_test", step_run_id=test_run, model_run_id=B, passed=False,
                         promote_on_pass=True, reason="service test failed", metrics={})
    assert ev.action == "demote" and servable_run(store).run_id == A
    # a failed test of a model that is not champion is recorded, the champion stays
    ev = record_decision(store, step="model_test", step_run_id=test_run, model_run_id=C, passed=False,
                         promote_on_pass=True, reason="service test failed", metrics={})
    assert ev.action == "refuse" and servable_run(store).run_id == A


def test_hostile_event_files_are_ignored(store):
    promote(store, A)
    path = PromotionLog(store).path
    bad = {"schema": 1, "seq": 2, "action": "promote", "run_id": "../../etc", "champion": "../../etc"}
    (open(f"{path}/000002-20261124T130000000Z.json", "w")).write(json.dumps(bad))
    (open(f"{path}/000003-20261124T130000001Z.json", "w")).write("{not json")
    (open(f"{path}/notes.txt", "w")).write("hello")
    assert servable_run(store).run_id == A
    ev = promote(store, B)  # numbering goes on after the highest file, readable or not
    assert ev.seq == 4 and servable_run(store).run_id == B


def test_concurrent_writers_never_share_a_number(store):
    _run(store, "model_eval", "20261124T140000000Z-e00009")
    errors = []

    def decide(i):
        try:
            record_decision(store, step="model_eval", step_run_id="20261124T140000000Z-e00009",
                            model_run_id=C, passed=False, promote_on_pass=True, reason=f"writer {i}", metrics={})
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [e.seq for e in PromotionLog(store).events()] == list(range(1, 9))


def test_cli_promote_rollback_promotions(store, tmp_path):
    from cvpipe.cli.main import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"store: {tmp_path / 'store'}\nenv: test\npipeline: promo\n")
    cli = CliRunner()
    r = cli.invoke(app, ["promote", C, "-c", str(cfg)])
    assert r.exit_code == 1 and "did not pass" in r.output
    assert cli.invoke(app, ["promote", A, "-c", str(cfg), "--reason", "first"]).exit_code == 0
    assert cli.invoke(app, ["promote", B, "-c", str(cfg)]).exit_code == 0
    assert cli.invoke(app, ["rollback", "-c", str(cfg)]).exit_code == 0
    r = cli.invoke(app, ["promotions", "--json", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["champion"] == A and [e["action"] for e in data["events"]] == ["promote", "promote", "rollback"]
    r = cli.invoke(app, ["promotions", "-c", str(cfg)])
    assert r.exit_code == 0 and "rollback" in r.output
