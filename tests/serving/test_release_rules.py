"""The release's rules as plain functions: canary routing, window figures, promote / rollback decisions, and the
Release object's mirroring with fake engines (no model, no server)."""

from __future__ import annotations

import random

import pytest

from cvpipe.inference.matching import detection_f1
from cvpipe.serving.release import Mirror, Release
from cvpipe.serving.release_rules import ReleasePlan, WindowFigures, WindowStats, decide, routes_to_challenger

PLAN = ReleasePlan(mode="canary", share=0.2, window_s=60, clean_windows=3, min_samples=10, min_agreement=0.7,
                   max_error_rate=0.05, max_latency_ratio=1.5)


def det(box, score=0.9, cid=1):
    return {"box": list(box), "score": score, "category_id": cid}


# ---- canary routing ---------------------------------------------------------------------------------------

def test_a_key_always_gets_the_same_model_and_the_share_holds():
    keys = [f"client-{i}" for i in range(20000)]
    picks = [routes_to_challenger(0.2, k) for k in keys]
    assert picks == [routes_to_challenger(0.2, k, random.Random(i)) for i, k in enumerate(keys)]  # rng unused
    frac = sum(picks) / len(keys)
    assert abs(frac - 0.2) < 4 * (0.2 * 0.8 / len(keys)) ** 0.5, frac  # binomial: 4 sigma
    more = [routes_to_challenger(0.5, k) for k in keys]  # raising the share only adds clients
    assert all(m for p, m in zip(picks, more) if p)


def test_without_a_key_each_request_is_drawn():
    rng = random.Random(7)
    picks = [routes_to_challenger(0.3, None, rng) for _ in range(20000)]
    assert abs(sum(picks) / len(picks) - 0.3) < 4 * (0.3 * 0.7 / 20000) ** 0.5
    assert len({routes_to_challenger(0.3, "", rng) for _ in range(50)}) == 2  # empty key: no key


# ---- window figures --------------------------------------------------------------------------------------------

def test_window_figures():
    s = WindowStats(index=4)
    for i in range(20):
        s.latency("champion", 10.0 + i)  # p95 of 10..29 = 28
        s.latency("challenger", 20.0 + 2 * i)  # p95 = 56
        s.challenger_call(ok=i != 0)
    s.compared(1.0, [det((0, 0, 10, 10), 0.8)], [det((0, 0, 10, 10), 0.6)])
    s.compared(0.0, [det((0, 0, 10, 10), 0.8)], [])
    s.dropped = 3
    f = s.figures()
    assert (f.index, f.compared, f.challenger_calls, f.challenger_errors, f.dropped) == (4, 2, 20, 1, 3)
    assert f.error_rate == pytest.approx(0.05) and f.agreement == pytest.approx(0.5)
    assert f.score_drift == pytest.approx(-0.2) and f.detections_ratio == pytest.approx(0.5)
    assert (f.champion_p95_ms, f.challenger_p95_ms, f.latency_ratio) == (28.0, 56.0, 2.0)
    empty = WindowStats().figures()
    assert empty.agreement is None and empty.latency_ratio is None and empty.error_rate == 0.0


def test_detection_f1():
    a = [det((0, 0, 10, 10)), det((20, 20, 30, 30)), det((50, 50, 60, 60), cid=2)]
    assert detection_f1(a, a) == 1.0 and detection_f1([], []) == 1.0
    assert detection_f1([], a) == 0.0 and detection_f1(a, []) == 0.0
    assert detection_f1(a[:1], a) == pytest.approx(2 * 1 / 4)
    assert detection_f1([det((50, 50, 60, 60), cid=1)], a[2:]) == 0.0  # another class
    assert detection_f1([det((0, 0, 10, 4))], a[:1]) == 0.0  # IoU 0.4 < 0.5
    assert detection_f1([det((0, 0, 10, 10)), det((0, 0, 10, 10))], a[:1]) == pytest.approx(2 / 3)  # one-to-one


# ---- decisions -----------------------------------------------------------------------------------------------

def figures(**kw) -> WindowFigures:
    base = dict(index=0, compared=50, challenger_calls=100, challenger_errors=0, error_rate=0.0, agreement=0.9,
                score_drift=0.0, detections_ratio=1.0, champion_p95_ms=20.0, challenger_p95_ms=22.0,
                latency_ratio=1.1, dropped=0)
    return WindowFigures(**{**base, **kw})


def test_clean_windows_in_a_row_promote():
    clean = 0
    for _ in range(2):
        d = decide(figures(), PLAN, clean)
        assert (d.action, d.verdict) == ("continue", "clean")
        clean = d.clean_windows
    d = decide(figures(), PLAN, clean)
    assert d.action == "promote" and d.clean_windows == 3
    manual = PLAN.model_copy(update={"auto_promote": False})
    assert decide(figures(), manual, 10).action == "continue"


@pytest.mark.parametrize("bad, why", [
    (dict(challenger_errors=6, error_rate=0.06), "error rate"),
    (dict(agreement=0.69), "agreement"),
    (dict(agreement=0.0, detections_ratio=0.0), "agreement"),  # a model that detects nothing
    (dict(challenger_p95_ms=31.0, latency_ratio=1.55), "latency"),
])
def test_a_crossed_limit_rolls_back_at_once(bad, why):
    d = decide(figures(**bad), PLAN, clean_so_far=2)
    assert d.action == "rollback" and d.verdict == "failed" and d.clean_windows == 0
    assert any(why in r for r in d.reasons), d.reasons


@pytest.mark.parametrize("edge", [dict(error_rate=0.05, challenger_errors=5), dict(agreement=0.7),
                                  dict(latency_ratio=1.5, challenger_p95_ms=30.0)])
def test_a_figure_at_its_limit_is_clean(edge):
    assert decide(figures(**edge), PLAN, 0).verdict == "clean"


def test_thin_windows_are_inconclusive_but_errors_still_count():
    d = decide(figures(compared=3, challenger_calls=5), PLAN, clean_so_far=2)
    assert (d.action, d.verdict, d.clean_windows) == ("continue", "inconclusive", 2)
    d = decide(figures(compared=3, agreement=0.0), PLAN, 0)  # too few compared to judge agreement
    assert d.verdict == "inconclusive"
    d = decide(figures(compared=3, challenger_calls=10, challenger_errors=10, error_rate=1.0), PLAN, 0)
    assert d.action == "rollback"


# ---- the Release object with fake engines --------------------------------------------------------------------

class FakeEngine:
    def __init__(self, run_id, dets):
        self.run_id, self.dets = run_id, dets


class FakeSink:
    """A sink whose queue holds `size` copies (what MirrorProcess's bounded queue does)."""

    def __init__(self, size):
        self.size, self.queued = size, []

    def submit(self, seq, data, score_thr):
        if len(self.queued) >= self.size:
            return False
        self.queued.append((seq, data, score_thr))
        return True


def test_shadow_mirrors_its_share_and_drops_when_the_queue_is_full():
    plan = ReleasePlan(mode="shadow", share=0.25, queue_size=4)
    sink = FakeSink(4)
    rel = Release(plan, FakeEngine("a", []), FakeEngine("b", []), 1, rng=random.Random(3), sink=sink)
    wanted = [rel.wants_mirror("champion") for _ in range(4000)]
    assert set(wanted) == {"challenger", None}
    assert abs(wanted.count("challenger") / 4000 - 0.25) < 0.03
    assert rel.role_for("any-client") == "champion"  # shadow: the champion answers every request
    queued = [rel.mirror(Mirror(b"x", None, [], "challenger")) for _ in range(10)]
    assert queued == [True] * 4 + [False] * 6 and rel.stats.dropped == 6
    assert [q[1] for q in sink.queued] == [b"x"] * 4 and all(m.data == b"" for m in rel.pending.values())
    without = Release(plan, FakeEngine("a", []), FakeEngine("b", []), 1)  # no sink: every copy dropped, counted
    assert without.mirror(Mirror(b"x", None, [], "challenger")) is False and without.stats.dropped == 1


def test_results_are_matched_to_their_copies_and_a_dead_sink_counts_its_copies_as_failures():
    from cvpipe.serving.mirror import MirrorResult

    plan = ReleasePlan(mode="shadow", share=1.0)
    rel = Release(plan, FakeEngine("a", []), FakeEngine("b", []), 1, sink=FakeSink(16))
    box = [det((0, 0, 10, 10))]
    for _ in range(4):
        rel.mirror(Mirror(b"x", None, box, "challenger"))  # the champion answered `box`
    assert rel.record_result(MirrorResult(1, "ok", {"detections": box}, 5.0)) is not None
    rel.record_result(MirrorResult(0, "refused"))  # the image: not the challenger's fault
    assert rel.record_result(MirrorResult(99, "ok", {"detections": []}, 5.0)) is None  # not one of ours
    assert rel.lose_pending() == 2 and rel.pending == {}
    f = rel.stats.figures()
    assert f.compared == 1 and f.agreement == 1.0 and f.challenger_calls == 3 and f.challenger_errors == 2


def test_mirrored_results_feed_the_window_and_windows_close_on_time():
    now = [0.0]
    plan = ReleasePlan(mode="canary", share=1.0, compare_share=1.0, window_s=10, min_samples=2, clean_windows=2)
    rel = Release(plan, FakeEngine("a", []), FakeEngine("b", []), 1, clock=lambda: now[0])
    box = [det((0, 0, 10, 10))]
    assert rel.role_for("k") == "challenger" and rel.wants_mirror("challenger") == "champion"
    for _ in range(2):  # canary: the challenger answered `box`, the champion's copy found nothing
        rel.stats.challenger_call(True)
        rel.record_mirror(Mirror(b"x", None, box, "champion"), {"detections": []}, 5.0)
    now[0] = 10.0
    f, d = rel.close_window()
    assert f.compared == 2 and f.agreement == 0.0 and d.action == "rollback"
    assert rel.stats.index == 1 and rel.window_end == 20.0 and rel.history[0]["verdict"] == "failed"
    now[0] = 95.0  # no traffic for long: the next window starts now
    rel.close_window()
    assert rel.window_end == 105.0


def test_detection_recall():
    from cvpipe.inference.matching import detection_recall

    a = [det((0, 0, 10, 10)), det((20, 20, 30, 30))]
    assert detection_recall([], a) == 0.0 and detection_recall(a, []) == 1.0
    assert detection_recall(a[:1], a) == 0.5 and detection_recall(a + [det((40, 40, 50, 50))], a) == 1.0
