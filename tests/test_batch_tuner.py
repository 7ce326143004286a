"""The tuner's choice, on a fake clock: it runs the arm measured fastest, spends a bounded share on the others,
follows a change of load, restores the thread count, and starts a later call from what an earlier one measured."""

from __future__ import annotations

import pytest
import torch

import cnnlens.batching as B


class Clock:
    """perf_counter that advances by the cost the current arm is given per image (no real time is read)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def fake(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(B, "time", clock)
    monkeypatch.setattr(B, "_MEASURED", {})
    return clock


def run(tuner, clock, total, cost):
    """Feed ``total`` images through the tuner; ``cost(arm, images_done)`` is the seconds per image."""
    done, log = 0, []
    while done < total:
        arm = tuner.next(total - done)
        n = min(arm.batch, total - done)
        with tuner.timed(arm, n):
            clock.now += cost(arm, done) * n
        log.append((arm, n, cost(arm, done) * n))
        done += n
    return log


A, S = B.Arm(4, True, 0), B.Arm(16, True, 1)


def test_the_fastest_arm_runs_and_the_others_get_a_bounded_share(fake):
    t = B.Tuner("w", (A, S))
    log = run(t, fake, 4000, lambda arm, done: 1.0 if arm == A else 10.0)
    # trials: each arm once, then a second look only at the one within 3× of the best
    assert [(a, n) for a, n, _ in log[:3]] == [(A, 4), (S, 16), (A, 4)]
    after = log[3:]
    slow = sum(s for a, _, s in after if a == S)
    assert sum(n for a, n, _ in after if a == A) > 3500
    assert 0 < slow <= 1.5 * B.EXPLORE * sum(s for *_, s in after)  # re-measured, within the budget
    assert t.best() == A and sum(n for _, n, _ in log) == 4000


def test_a_change_of_load_changes_the_choice(fake):
    t = B.Tuner("w", (A, S))

    def cost(arm, done):  # A is twice as fast as S, until a load arrives after 1000 images
        return (1.0 if arm == A else 2.0) if done < 1000 else (5.0 if arm == A else 2.0)

    log = run(t, fake, 4000, cost)
    late = [a for a, *_ in log][-50:]
    assert late.count(S) > 40 and t.best() == S
    assert [a for a, *_ in log[3:60]].count(A) > 50  # before the change, A ran


def test_a_later_call_starts_from_the_earlier_measurements(fake):
    run(B.Tuner("w", (A, S)), fake, 200, lambda arm, done: 1.0 if arm == S else 3.0)
    t = B.Tuner("w", (A, S))
    log = run(t, fake, 64, lambda arm, done: 1.0 if arm == S else 3.0)
    assert [a for a, *_ in log] == [S] * 4  # no trials again
    other = B.Tuner("other workload", (A, S))
    assert other.trials  # a different workload is measured afresh


def test_the_thread_count_is_restored_also_on_error(fake):
    n = torch.get_num_threads()
    t = B.Tuner("w", (A, B.Arm(4, True, n + 1)))
    with pytest.raises(RuntimeError):
        with t.timed(B.Arm(4, True, n + 1), 4):
            assert torch.get_num_threads() == n + 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == n
