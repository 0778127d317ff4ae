"""Shadow and canary releases through the service's HTTP API, in process (the service's ASGI app over a real
store with real packed models): A is the champion, B a fair challenger (score_thr 0.5), DEG a self-consistent
degraded model (packed with score_thr 0.99: its reference is its own, near-empty output), NAMES2 one that
breaks the serving contract. Windows last 1 s so that rules act within a test."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from .conftest import _commit, _pack, two_pack_store
from .test_hot_swap import _edit

RUN_A, RUN_B = "20261124T100000000Z-aaaaaa", "20261124T110000000Z-bbbbbb"
RUN_DEG, RUN_NAMES2 = "20261124T120000000Z-d00001", "20261124T120000000Z-d00002"
TOKEN = "s3cret-admin-token-4242"
IMAGES = sorted((Path(__file__).resolve().parents[2] / "examples" / "coco_sample" / "images").glob("*.jpg"))[:12]


@pytest.fixture(scope="module")
def release_store(tmp_path_factory, person_image):
    import shutil

    from cvpipe.store.promotion import PromotionLog

    root = tmp_path_factory.mktemp("release")
    store, a, b = two_pack_store(root, person_image, bento_a=False)
    deg = _pack(root / "work", RUN_DEG, 0.99, False, person_image)
    _commit(store, RUN_DEG, deg, deg["summary"])
    names2 = root / "work" / "names2" / "model"
    shutil.copytree(b["model"], names2)
    _edit(names2, lambda m: m.update(run_id=RUN_NAMES2, class_names=m["class_names"][:2],
                                     category_ids=m["category_ids"][:2]))
    _commit(store, RUN_NAMES2, {"model": names2, "bento": b["bento"]}, {})
    PromotionLog(store).append("promote", RUN_A, run_id=RUN_A, reason="first", forced=True)
    return {"store": store, "a": a, "root": root}


@pytest.fixture
def client(release_store, monkeypatch):
    from serving.inprocess import service_app, service_env

    st = release_store["store"]
    monkeypatch.setenv("CVPIPE_CACHE", str(st.cache_dir.parent))
    with service_env(release_store["a"]["model"], follow_store=st.url, store_env=st.env,
                     store_pipeline=st.pipeline, admin_token=TOKEN), TestClient(service_app()) as c:
        yield c
    _reset_champion(st)


def _reset_champion(st) -> None:
    from cvpipe.store.promotion import PromotionLog

    log = PromotionLog(st)
    log.close_open_release("release_abort", "test done")
    if log.champion_id() != RUN_A:
        log.append("rollback", RUN_A, run_id=RUN_A, reason="test done")


def admin(client, **body):
    return client.post("/admin/release", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def predict(client, i: int, key: str | None = None):
    headers = {"x-client-id": key} if key else {}
    r = client.post("/predict", files={"image": ("i.jpg", IMAGES[i % len(IMAGES)].read_bytes(), "image/jpeg")},
                    headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-cvpipe-model"] == body["model"]["run_id"]
    body["model"]["role"] = r.headers["x-cvpipe-model-role"]  # the tests below read both together
    return body


def ended(client) -> bool:
    """The release has ended and its end is in the promotion log."""
    status = admin(client, action="status").json()
    return not status["active"] and bool((status["last"] or {}).get("event_seq"))


def traffic_until(client, done, timeout_s: float = 60, key_of=lambda i: None) -> list[dict]:
    answers, i, deadline = [], 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers.append(predict(client, i, key_of(i)))
        i += 1
        if done():
            return answers
        time.sleep(0.02)
    raise AssertionError(f"timed out; status {admin(client, action='status').json()}")


def events(st) -> list[dict]:
    from cvpipe.store.promotion import PromotionLog

    return [e.data for e in PromotionLog(st).events()]


PLAN = dict(window_s=1.0, min_samples=4, clean_windows=2, min_agreement=0.5, max_latency_ratio=10.0)


def test_shadow_release_of_a_fair_challenger_is_promoted(client, release_store):
    st = release_store["store"]
    r = admin(client, action="start", run_id=RUN_B, plan={"mode": "shadow", "share": 1.0, **PLAN})
    assert r.status_code == 200 and r.json()["release"]["challenger"] == RUN_B, r.text
    answers = traffic_until(client, lambda: ended(client))
    before = answers[:-1]
    assert all(a["model"] == {"run_id": RUN_A, "role": "champion"} for a in before)  # shadow: A answers
    status = admin(client, action="status").json()
    assert status["last"]["state"] == "promoted", status
    ev = events(st)
    assert [e["action"] for e in ev[-2:]] == ["release_start", "promote"]
    assert ev[-1]["champion"] == RUN_B and ev[-1]["source"] == "release"
    assert ev[-1]["metrics"]["agreement"] >= 0.5 and ev[-1]["metrics"]["compared"] >= 4
    assert ev[-2]["plan"]["mode"] == "shadow"
    assert predict(client, 0)["model"] == {"run_id": RUN_B, "role": "champion"}  # B is the champion now
    assert client.get("/info").json()["live_run_id"] == RUN_B


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_a_self_consistent_degraded_model_is_rolled_back_within_one_window(client, release_store, mode):
    st = release_store["store"]
    plan = {"mode": mode, "share": 0.5 if mode == "canary" else 1.0, "compare_share": 1.0, **PLAN,
            "clean_windows": 100}
    assert admin(client, action="start", run_id=RUN_DEG, plan=plan).status_code == 200
    answers = traffic_until(client, lambda: ended(client),
                            key_of=lambda i: f"client-{i % 8}")
    last = admin(client, action="status").json()["last"]
    assert last["state"] == "rolled_back", last
    conclusive = [w for w in last["windows"] if w["verdict"] != "inconclusive"]
    assert len(conclusive) == 1 and conclusive[0]["verdict"] == "failed"  # the first window that counts
    assert "agreement" in " ".join(conclusive[0]["reasons"])
    ev = events(st)[-1]
    assert ev["action"] == "release_rollback" and ev["champion"] == RUN_A and ev["metrics"]["agreement"] < 0.5
    roles = {}
    for i, a in enumerate(answers[:-1]):
        roles.setdefault(f"client-{i % 8}", set()).add(a["model"]["run_id"])
    assert all(len(v) == 1 for v in roles.values()), roles  # one client, one model
    if mode == "canary":
        assert {RUN_A, RUN_DEG} == set().union(*roles.values())
    else:
        assert set().union(*roles.values()) == {RUN_A}
    assert predict(client, 0, "client-1")["model"] == {"run_id": RUN_A, "role": "champion"}


def test_a_release_after_an_aborted_long_one_still_decides(client, release_store):
    """The loops of a release end with it: a new release never waits on an old one's 600 s window."""
    assert admin(client, action="start", run_id=RUN_B, plan={"window_s": 600}).status_code == 200
    predict(client, 0)
    assert admin(client, action="abort").status_code == 200
    plan = {"mode": "canary", "share": 1.0, "compare_share": 1.0, **PLAN}
    assert admin(client, action="start", run_id=RUN_DEG, plan=plan).status_code == 200
    traffic_until(client, lambda: ended(client), timeout_s=30)
    assert admin(client, action="status").json()["last"]["state"] == "rolled_back"


def test_the_mirror_process_runs_copies_at_low_priority_and_drops_what_does_not_fit(release_store):
    """cvpipe.serving.mirror on its own: a child of its own with EVERY thread under SCHED_IDLE at nice 19 (the
    model's runtime threads and those a library started before the policy), the same answers as the engine in
    the worker, a bounded queue that refuses (never waits) when full, a refused image told apart, a restart."""
    import os
    import signal

    from cvpipe.serving.engine import DetectorEngine
    from cvpipe.serving.mirror import MirrorProcess
    from cvpipe.serving.settings import ServiceSettings

    model, data = release_store["a"]["model"], IMAGES[0].read_bytes()
    expected = DetectorEngine(model, ServiceSettings()).predict_sync_timed(data)[0]["detections"]
    sink = MirrorProcess(model, ServiceSettings(), queue_size=2).start()
    try:
        pid = sink.process.pid
        assert pid != os.getpid() and sink.scheduling == "idle+group"
        queued = [sink.submit(i, data, None) for i in range(20)]  # far faster than the child runs them
        assert queued[:2] == [True, True] and False in queued, queued
        assert sink.submit(99, b"not an image", None) in (True, False)
        wanted = {i for i, q in enumerate(queued) if q}
        results = {}
        deadline = time.monotonic() + 120
        while not wanted <= results.keys() and time.monotonic() < deadline:
            r = sink.next_result(1.0)
            if r is not None:
                results[r.seq] = r
        assert wanted <= results.keys(), results.keys()
        assert all(results[i].outcome == "ok" and results[i].out["detections"] == expected for i in wanted)
        assert sink.submit(100, b"not an image", None)
        while (r := sink.next_result(10.0)) is not None and r.seq != 100:
            pass
        assert r is not None and r.outcome == "refused"
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]  # the model has run: its threads exist
        assert len(threads) > 1 and all(os.sched_getscheduler(t) == os.SCHED_IDLE for t in threads), threads
        assert all(os.getpriority(os.PRIO_PROCESS, t) == 19 for t in threads)
        os.kill(pid, signal.SIGKILL)
        sink.process.join(10)
        assert not sink.alive
        sink.start()  # what the release does when its mirror dies
        assert sink.alive and sink.process.pid != pid
    finally:
        sink.close()
    assert not sink.alive


def test_a_mirror_that_cannot_start_refuses_the_release_and_the_champion_serves(client, release_store,
                                                                                 monkeypatch, tmp_path):
    from cvpipe.serving.mirror import MirrorProcess, MirrorStartError
    from cvpipe.serving.settings import ServiceSettings

    with pytest.raises(MirrorStartError, match="could not load its model"):
        MirrorProcess(tmp_path, ServiceSettings(), start_timeout_s=60).start()  # no model there
    st = release_store["store"]
    n = len(events(st))

    def fail(self):
        raise MirrorStartError("the mirror process did not load its model in 120 s")

    monkeypatch.setattr(MirrorProcess, "start", fail)
    r = admin(client, action="start", run_id=RUN_B, plan={"mode": "shadow"})
    assert r.status_code == 503 and "mirror" in r.json()["error"], r.text
    assert len(events(st)) == n and admin(client, action="status").json()["active"] is False
    assert predict(client, 0)["model"] == {"run_id": RUN_A, "role": "champion"}


def test_a_killed_mirror_process_is_restarted_and_the_release_goes_on(client, release_store):
    import os
    import signal

    import psutil

    def mirror_children():
        found = []
        for p in psutil.Process().children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                    found.append(p)
            except psutil.Error:  # gone, or a zombie not reaped yet
                pass
        return found

    plan = {"mode": "shadow", "share": 1.0, **PLAN, "clean_windows": 1000, "max_error_rate": 1.0,
            "min_agreement": 0.0, "auto_promote": False}
    assert admin(client, action="start", run_id=RUN_B, plan=plan).status_code == 200
    try:
        (child,) = mirror_children()
        assert child.nice() == 19 and os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        assert admin(client, action="status").json()["release"]["mirror"]["scheduling"] == "idle+group"
        for i in range(3):
            predict(client, i)
        os.kill(child.pid, signal.SIGKILL)
        traffic_until(client, lambda: any(p.pid != child.pid for p in mirror_children()), timeout_s=90)
        restarted_in = admin(client, action="status").json()["release"]["window"]

        def comparing_again() -> bool:  # windows after the restart compare the new child's results
            windows = admin(client, action="status").json()["release"]["windows"]
            return sum(w["compared"] for w in windows if w["index"] > restarted_in) > 0

        traffic_until(client, comparing_again, timeout_s=60)
        status = admin(client, action="status").json()
        assert status["active"] and status["release"]["mirror"]["running"]  # errors alone did not end it
    finally:
        admin(client, action="abort")
    deadline = time.monotonic() + 10
    while mirror_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mirror_children() == []  # the release's end stops its mirror


def test_bad_release_commands_are_clear_and_the_champion_serves(client, release_store):
    st = release_store["store"]
    n = len(events(st))
    r = admin(client, action="start", run_id="20261124T130000000Z-ffffff", plan={})
    assert r.status_code == 404 and "unknown run" in r.json()["error"] and "/tmp" not in r.text
    r = admin(client, action="start", run_id="../../etc/passwd")
    assert r.status_code == 404
    r = admin(client, action="start", run_id=RUN_NAMES2)
    assert r.status_code == 422 and "serving contract" in r.json()["error"] and "/tmp" not in r.text
    r = admin(client, action="start", run_id=RUN_B, plan={"share": 2})
    assert r.status_code == 422 and "share" in r.json()["error"]
    r = admin(client, action="start", run_id=RUN_B, plan={"mode": "blue-green"})
    assert r.status_code == 422
    assert admin(client, action="promote").status_code == 409  # nothing to promote
    assert admin(client, action="dance").status_code == 422
    assert client.post("/admin/release", json={"action": "status"}).status_code == 401
    assert len(events(st)) == n  # nothing recorded for refused commands
    assert admin(client, action="start", run_id=RUN_B, plan={"window_s": 600}).status_code == 200
    r = admin(client, action="start", run_id=RUN_DEG)
    assert r.status_code == 409 and "in progress" in r.json()["error"]  # two releases at once
    r = client.post("/admin/reload", json={"run_id": RUN_DEG}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 409  # no hot swap behind a release's back
    assert predict(client, 1)["model"]["run_id"] == RUN_A
    r = admin(client, action="abort", reason="changed my mind")
    assert r.status_code == 200 and r.json()["state"] == "aborted"
    assert [e["action"] for e in events(st)[-2:]] == ["release_start", "release_abort"]
    assert predict(client, 2)["model"]["run_id"] == RUN_A


def test_a_restart_mid_release_records_it_aborted(release_store, monkeypatch):
    from serving.inprocess import service_app, service_env

    st = release_store["store"]
    monkeypatch.setenv("CVPIPE_CACHE", str(st.cache_dir.parent))
    env = dict(follow_store=st.url, store_env=st.env, store_pipeline=st.pipeline, admin_token=TOKEN)
    try:
        with service_env(release_store["a"]["model"], **env), TestClient(service_app()) as c:
            assert admin(c, action="start", run_id=RUN_B, plan={"window_s": 600}).status_code == 200
        # the service is gone without ending its release (a crash or kill looks the same to the log)
        assert events(st)[-1]["action"] == "release_start"
        _forget_bentoml_metrics()  # a second app in this process (a real restart is a new process)
        with service_env(release_store["a"]["model"], **env), TestClient(service_app()) as c:
            ev = events(st)
            assert ev[-1]["action"] == "release_abort" and "restarted" in ev[-1]["reason"]
            assert ev[-1]["champion"] == RUN_A and ev[-1]["release_seq"] == ev[-2]["seq"]
            assert admin(c, action="status").json()["active"] is False
            assert predict(c, 0)["model"]["run_id"] == RUN_A
            assert admin(c, action="start", run_id=RUN_B, plan={"window_s": 600}).status_code == 200  # again
    finally:
        _reset_champion(st)


def test_a_release_is_refused_under_several_workers_and_says_why(release_store, monkeypatch):
    """A release lives in one worker's memory (its windows, its challenger, its mirror process): with 2 workers
    `start` is refused with 409 and what to do, nothing is logged, and the champion serves."""
    from serving.inprocess import service_app, service_env

    st = release_store["store"]
    monkeypatch.setenv("CVPIPE_CACHE", str(st.cache_dir.parent))
    n = len(events(st))
    _forget_bentoml_metrics()
    with service_env(release_store["a"]["model"], follow_store=st.url, store_env=st.env, store_pipeline=st.pipeline,
                     admin_token=TOKEN, workers=2), TestClient(service_app()) as c:
        r = admin(c, action="start", run_id=RUN_B, plan={"mode": "shadow"})
        assert r.status_code == 409, r.text
        assert "2 workers" in r.json()["error"] and "CVPIPE_WORKERS=1" in r.json()["error"]
        assert admin(c, action="status").json()["active"] is False and len(events(st)) == n
        assert predict(c, 0)["model"] == {"run_id": RUN_A, "role": "champion"}


def _forget_bentoml_metrics() -> None:
    import prometheus_client

    registry = prometheus_client.REGISTRY
    for collector, names in list(registry._collector_to_names.items()):
        if any(n.startswith("bentoml_") for n in names):
            registry.unregister(collector)


def test_a_degraded_model_forced_past_the_release_is_refused_unless_the_risk_is_accepted(release_store):
    from cvpipe.serving.engine import DetectorEngine
    from cvpipe.serving.swap import ModelManager, StoreSource
    from cvpipe.store.promotion import promote

    st = release_store["store"]
    source = StoreSource(st.url, st.env, st.pipeline)
    source.store.cache_dir = st.cache_dir
    manager = ModelManager(DetectorEngine(release_store["a"]["model"]), DetectorEngine, source)
    r = manager.load(RUN_DEG)  # pinned through /admin/reload: its own check passes, the live one does not
    assert r["swapped"] is False and "live model's test image" in r["error"], r
    st.write_manifest({"run_id": "20261124T130000000Z-e00001", "step": "model_eval", "status": "complete",
                       "inputs": {"model": {"run_id": RUN_DEG}}, "outputs": {}, "summary": {"gate": {"passed": True}}})
    try:
        promote(st, RUN_DEG, "forced past the release")
        manager.rejected.clear()
        assert manager.poll_once()["swapped"] is False and manager.live_run_id == RUN_A  # the follower refuses
        promote(st, RUN_A, "back", force=True)
        promote(st, RUN_DEG, "I know", accept_risk=True)
        manager.rejected.clear()
        assert manager.poll_once()["swapped"] is True and manager.live_run_id == RUN_DEG
    finally:
        _reset_champion(st)
    manager2 = ModelManager(DetectorEngine(release_store["a"]["model"]), DetectorEngine, source)
    assert manager2.load(RUN_DEG, accept_risk=True)["swapped"] is True
    r = manager2.load(RUN_B)
    assert r["swapped"] is True, r  # a fair model passes the check against the live one


def test_metrics_name_both_models(client, release_store):
    assert admin(client, action="start", run_id=RUN_B, plan={"mode": "canary", "share": 0.5, "compare_share": 1.0,
                                                             "window_s": 600}).status_code == 200
    for i in range(16):
        predict(client, i, f"client-{i}")
    time.sleep(1.0)  # the off-path copies
    import prometheus_client  # what /metrics serves (in process BentoML's /metrics route needs its server:
    # the slow test reads the real endpoint)

    text = prometheus_client.generate_latest().decode()
    admin(client, action="abort")
    for run, role in ((RUN_A, "champion"), (RUN_B, "challenger")):
        assert f'cvpipe_answers_total{{model="{run}",outcome="ok",path="answer",role="{role}"}}' in text or \
            any(f'model="{run}"' in ln and f'role="{role}"' in ln and "cvpipe_answers_total" in ln
                for ln in text.splitlines()), text[-3000:]
    assert "cvpipe_model_latency_seconds_bucket" in text and json.dumps(RUN_B)[1:-1] in text


def test_cli_release_commands(client, release_store, monkeypatch):
    """`cvpipe release ...` against the service (its HTTP calls routed to the in-process app)."""
    import httpx
    from typer.testing import CliRunner

    from cvpipe.cli.main import app

    def post(url, json, headers, timeout):
        return client.post(url.replace("http://svc", ""), json=json, headers=headers)

    monkeypatch.setattr(httpx, "post", post)
    runner = CliRunner()
    base = ["--url", "http://svc", "--admin-token-env", "REL_TOKEN"]
    r = runner.invoke(app, ["release", "status", *base])
    assert r.exit_code == 2 and "REL_TOKEN is empty" in r.output
    monkeypatch.setenv("REL_TOKEN", TOKEN)
    r = runner.invoke(app, ["release", "start", "20261124T130000000Z-ffffff", *base])
    assert r.exit_code == 1 and "refused (404)" in r.output and "unknown run" in r.output
    assert "/tmp" not in r.output
    r = runner.invoke(app, ["release", "start", RUN_B, "--mode", "canary", "--share", "0.3", "--window", "600",
                            "--mirror-cpu-share", "0.4", *base])
    assert r.exit_code == 0 and RUN_B in r.output and "running" in r.output, r.output
    r = runner.invoke(app, ["release", "start", RUN_B, *base])
    assert r.exit_code == 1 and "in progress" in r.output
    r = runner.invoke(app, ["release", "status", "--json", *base])
    assert r.exit_code == 0 and '"active": true' in r.output and '"mirror_cpu_share": 0.4' in r.output
    r = runner.invoke(app, ["release", "promote", "-r", "looks good", *base])
    assert r.exit_code == 0 and "promoted" in r.output, r.output
    assert events(release_store["store"])[-1]["reason"] == "looks good"
    r = runner.invoke(app, ["release", "abort", *base])
    assert r.exit_code == 1 and "no release in progress" in r.output
    r = runner.invoke(app, ["release", "start", RUN_B, "--mode", "blue", *base])
    assert r.exit_code == 2


# ---- a real `bentoml serve` under load ---------------------------------------------------------------------

def wait_release_end(url: str, timeout_s: float = 120) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = httpx.post(url + "/admin/release", json={"action": "status"},
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
        if not s["active"] and (s["last"] or {}).get("event_seq"):
            return s["last"]
        time.sleep(0.3)
    raise AssertionError(f"the release never ended: {s}")


@pytest.mark.slow
def test_promote_and_rollback_cycles_under_load_on_a_real_server(release_store, person_image, tmp_path):
    """A real `bentoml serve` under steady load: canary of B promoted, canary of DEG rolled back automatically,
    shadow of A (against B) promoted back; every answer a 200 naming its model; /metrics names both models."""
    import httpx

    from cvpipe.serving.process import ServiceProcess

    from .test_hot_swap import Load

    st = release_store["store"]
    a_bento = _pack(release_store["root"] / "bento_work", RUN_A, 0.25, True, person_image)
    bento = sorted(Path(a_bento["bento"]).glob("*.bento"))[0]
    env = {"CVPIPE_FOLLOW_STORE": st.url, "CVPIPE_STORE_ENV": st.env, "CVPIPE_STORE_PIPELINE": st.pipeline,
           "CVPIPE_ADMIN_TOKEN": TOKEN, "CVPIPE_CACHE": str(st.cache_dir.parent)}
    plan = {"window_s": 2.0, "min_samples": 5, "clean_windows": 2, "min_agreement": 0.5, "share": 0.5,
            "compare_share": 1.0, "max_latency_ratio": 5.0}
    steps = [(RUN_B, "canary", "promoted"), (RUN_DEG, "canary", "rolled_back"), (RUN_A, "shadow", "promoted")]
    try:
        with ServiceProcess(bento, env=env, log_path=tmp_path / "server.log") as svc, \
                Load(svc.url, person_image.read_bytes()) as load:
            n = len(events(st))
            for run, mode, expected in steps:
                r = httpx.post(svc.url + "/admin/release", headers={"Authorization": f"Bearer {TOKEN}"},
                               json={"action": "start", "run_id": run, "plan": {**plan, "mode": mode}}, timeout=120)
                assert r.status_code == 200, r.text
                last = wait_release_end(svc.url)
                assert last["state"] == expected, last
            metrics = httpx.get(svc.url + "/metrics").text
            live = httpx.get(svc.url + "/info").json()["live_run_id"]
            acts = [e["action"] for e in events(st)[n:]]
        results = load.results
    finally:
        _reset_champion(st)
    failed = [r for r in results if r[0] != 200]
    assert not failed and len(results) > 50, f"{len(failed)} failed of {len(results)}: {failed[:5]}"
    assert {RUN_A, RUN_B, RUN_DEG} <= {rid for _, rid in results} and live == RUN_A
    assert acts == ["release_start", "promote", "release_start", "release_rollback", "release_start", "promote"], acts
    for run in (RUN_A, RUN_B, RUN_DEG):
        assert f'model="{run}"' in metrics and "cvpipe_answers_total" in metrics, metrics[-2000:]
