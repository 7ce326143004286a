"""The explorer's worker: one thread, foreground jobs before background ones, claimed jobs done by their claimer."""

from __future__ import annotations

import threading

from cnnlens.explore.worker import Worker


def _hold(w: Worker):
    gate = threading.Event()
    w.submit("hold", lambda report: gate.wait(30))  # the worker is busy: what follows queues up
    return gate


def test_foreground_jobs_run_before_queued_background_jobs_and_a_waited_on_one_moves_up():
    w = Worker()
    try:
        ran = []
        gate = _hold(w)
        for k in ("b1", "b2", "b3"):
            w.submit(k, lambda report, k=k: ran.append(k), background=True)
        w.submit("f1", lambda report: ran.append("f1"))
        again = w.submit("b3", lambda report: ran.append("never"))  # a page now waits on b3: it moves up
        w.submit("f2", lambda report: ran.append("f2"))
        gate.set()
        assert w.run("last", lambda report: ran.append("last"), timeout=30) is None
        for k in ("b1", "b2", "b3"):
            assert w.get(k).done.wait(30)
        assert ran == ["f1", "b3", "f2", "last", "b1", "b2"], ran  # b3 ran once, in the foreground
        assert again is w.get("b3") and again.status == "done"
    finally:
        w.close()


def test_a_running_job_claims_queued_jobs_and_finishes_them():
    w = Worker()
    try:
        gate = _hold(w)
        calls = []

        def batch(report):
            others = w.claim("fv/a/", 10)
            calls.append(["fv/a/1"] + [j.key for j in others])
            for j in others:
                j.finish(j.key.upper())
            return "FV/A/1"

        jobs = [w.submit(f"fv/a/{c}", batch if c == 1 else (lambda report: calls.append("alone"))) for c in (1, 2, 3)]
        other = w.submit("fv/ab/1", lambda report: calls.append("other layer") or "x")
        gate.set()
        assert all(j.done.wait(30) for j in jobs) and other.done.wait(30)
        assert calls == [["fv/a/1", "fv/a/2", "fv/a/3"], "other layer"]  # claimed ones never ran alone
        assert [j.value for j in jobs] == ["FV/A/1", "FV/A/2", "FV/A/3"] and {j.status for j in jobs} == {"done"}
        failed = w.submit("fv/c/1", lambda report: (w.claim("fv/c/", 5), 1 / 0))
        assert failed.done.wait(30) and failed.status == "error" and "ZeroDivisionError" in failed.error
    finally:
        w.close()


def test_cancel_stops_a_running_job_between_chunks_and_drops_the_queued_ones():
    """A cancelled running job stops at its next progress report; queued jobs of the prefix never run; other jobs
    run; a cancelled key can be asked for again."""
    import time

    w = Worker()
    try:
        chunks, ran = [], []
        started = threading.Event()

        def long(report):
            for i in range(2000):  # bounded: 2000 chunks of 10 ms at most
                report(i / 2000)
                chunks.append(i)
                started.set()
                time.sleep(0.01)
            return "finished"

        run = w.submit("fv/L/0", long)
        for c in (1, 2):
            w.submit(f"fv/L/{c}", lambda report, c=c: ran.append(c))
        w.submit("fv/M/0", lambda report: ran.append("other layer"))
        assert started.wait(30)
        assert w.cancel("fv/L/") == 3
        assert run.done.wait(30) and run.status == "cancelled" and run.error == "cancelled"
        n = len(chunks)
        assert 0 < n < 2000
        assert w.get("fv/M/0").done.wait(30) and w.get("fv/M/0").status == "done"
        assert ran == ["other layer"] and {w.get(f"fv/L/{c}").status for c in (1, 2)} == {"cancelled"}
        assert len(chunks) == n  # nothing ran after the cancel
        again = w.submit("fv/L/1", lambda report: ran.append("again"))
        assert again.done.wait(30) and again.status == "done" and ran[-1] == "again"
        assert w.cancel("fv/L/") == 0
    finally:
        w.close()
