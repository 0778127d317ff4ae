"""How the shadow mirror stays out of the answers' way (cvpipe.serving.mirror): the CPU budget as plain numbers,
the copy loop under a fake clock, and the scheduling applied to every thread of a process (in a child process of
its own, so the test process keeps its priority). No model, no server."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading

import pytest

from cvpipe.serving.mirror import CpuBudget, MirrorPolicy, MirrorResult, lower_priority, serve_copies


def test_the_budget_is_a_duty_cycle_whatever_the_copy_size():
    b = CpuBudget(share=0.25)
    assert b.pause_s(0.0) == 0.0  # nothing spent yet
    b.record(start=1.0, cpu_s=0.1)  # 0.1 s of CPU at a quarter of a core: the next copy not before 1.4
    assert b.pause_s(1.1) == pytest.approx(0.3) and b.pause_s(1.4) == 0.0
    b.record(start=2.0, cpu_s=0.5)  # bigger than a second's budget: still just proportional
    assert b.pause_s(2.5) == pytest.approx(1.5)
    b.record(start=5.0, cpu_s=0.1)  # it waited for a core until 5.6 (wall 0.6 s): the share is kept already
    assert b.pause_s(5.6) == 0.0


class FakeTime:
    """A wall clock and a CPU clock that only move when the loop runs a copy (cost) or sleeps."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.runs: list[tuple[float, float]] = []  # (start, end) of each copy

    def sleep(self, s: float) -> None:
        assert s > 0
        self.wall += s

    def run(self, cost: float):
        def one(item):
            start = self.wall
            self.wall += cost
            self.cpu += cost
            self.runs.append((start, self.wall))
            return MirrorResult(item[0], "ok")
        return one


@pytest.mark.parametrize("share,cost", [(0.25, 0.05), (0.1, 0.012), (0.5, 0.3)])
def test_the_copy_loop_never_uses_more_than_its_share_of_a_core(share, cost):
    """A queue that is never empty (every request copied, the worst case): over every 1 s window the loop ran
    copies for at most share x 1 s plus the one copy that crossed the line, and over the run close to the share."""
    t = FakeTime()
    items = iter([(i, b"", None) for i in range(2000)] + [None])
    given: list[MirrorResult] = []
    serve_copies(t.run(cost), lambda: next(items), given.append, CpuBudget(share),
                 clock=lambda: t.wall, cpu_clock=lambda: t.cpu, sleep=t.sleep)
    assert [r.seq for r in given] == list(range(2000))  # every copy taken was run, in order
    assert t.cpu / t.wall == pytest.approx(share, rel=0.01)  # a cap, not a stop: it still compares copies
    for start, _ in t.runs[::7]:  # every window that starts with a copy
        busy = sum(min(e, start + 1.0) - s for s, e in t.runs if start <= s < start + 1.0)
        assert busy <= share + cost + 1e-9, (start, busy)


def test_without_a_budget_the_loop_runs_copies_back_to_back():
    t = FakeTime()
    items = iter([(i, b"", None) for i in range(50)] + [None])
    serve_copies(t.run(0.05), lambda: next(items), lambda r: None, None,
                 clock=lambda: t.wall, cpu_clock=lambda: t.cpu, sleep=t.sleep)
    assert t.cpu == pytest.approx(t.wall)


def _policies_after_lowering(policy: MirrorPolicy, out) -> None:
    """In a child: a thread started BEFORE the policy is set (what OpenBLAS does at numpy's import), then the
    policy, then a thread started after; report (nice, scheduler) of every thread."""
    stop = threading.Event()
    early = threading.Thread(target=stop.wait)
    early.start()
    applied = lower_priority(policy)
    late = threading.Thread(target=stop.wait)
    late.start()
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    with open("/proc/self/autogroup") as f:
        group = f.read()
    out.put((applied, {tid: (os.getpriority(os.PRIO_PROCESS, tid), os.sched_getscheduler(tid)) for tid in tids},
             os.getsid(0) == os.getpid(), group))
    stop.set()
    early.join()
    late.join()


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="SCHED_IDLE, per-thread nice and autogroups "
                    "are Linux's (a kernel built with CONFIG_SCHED_AUTOGROUP)")
@pytest.mark.parametrize("policy,expected", [(MirrorPolicy(nice=19), "idle+group"),
                                             (MirrorPolicy(nice=15, sched_idle=False, own_group=False), "nice")])
def test_every_thread_of_the_mirror_gets_the_policy_even_one_started_before(policy, expected):
    """The default: SCHED_IDLE and nice 19 on every thread, in a session (so an autogroup) of its own at nice
    19, whose CPU is not charged to the worker's session."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_policies_after_lowering, args=(policy, out))
    p.start()
    applied, threads, leads_session, group = out.get(timeout=60)
    p.join(10)
    assert applied == expected and len(threads) >= 3, threads  # main, early, late (+ the queue's feeder)
    assert leads_session is policy.own_group
    assert group.endswith(f"nice {policy.nice}\n") is policy.own_group, group
    scheduler = os.SCHED_IDLE if policy.sched_idle else os.SCHED_OTHER
    assert all(nice == policy.nice and sched == scheduler for nice, sched in threads.values()), threads


def test_the_release_plan_reaches_the_mirror_process(monkeypatch):
    from cvpipe.serving.mirror import MirrorProcess, process_mirrors
    from cvpipe.serving.release_rules import ReleasePlan
    from cvpipe.serving.settings import ServiceSettings

    monkeypatch.setattr(MirrorProcess, "start", lambda self: self)
    plan = ReleasePlan(mirror_nice=17, mirror_idle=False, mirror_own_group=False, mirror_cpu_share=0.3, queue_size=5)
    sink = process_mirrors(ServiceSettings())("/nowhere", plan)
    assert sink.policy == MirrorPolicy(nice=17, sched_idle=False, own_group=False, cpu_share=0.3)
    assert sink.queue_size == 5
    default = ReleasePlan()
    assert default.mirror_idle and default.mirror_own_group  # SCHED_IDLE, in a session of its own
