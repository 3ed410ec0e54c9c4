"""The watchdog over transactional calls: a call stuck past its own timeout ends the process."""

from __future__ import annotations

import threading
import time

from edge.transactions import EXIT_STUCK, AssignmentGuard, Watchdog


def test_a_call_stuck_past_its_timeout_and_the_grace_ends_the_process() -> None:
    exits: list[int] = []
    stuck = threading.Event()

    def on_stuck(code: int) -> None:
        exits.append(code)
        stuck.set()

    dog = Watchdog("enricher", grace_s=0.2, tick_s=0.02, on_stuck=on_stuck)

    def never_returns(timeout: float) -> None:  # as send_offsets_to_transaction can
        stuck.wait(5)

    started = time.monotonic()
    dog.call("send_offsets_to_transaction", 0.1, never_returns)
    assert exits == [EXIT_STUCK]
    assert time.monotonic() - started >= 0.3


def test_calls_that_return_in_time_are_left_alone_and_get_their_timeout() -> None:
    exits: list[int] = []
    dog = Watchdog("scorer", grace_s=0.1, tick_s=0.01, on_stuck=exits.append)
    got: list[tuple[str, float]] = []

    def slow_commit(arg: str, timeout: float) -> None:
        time.sleep(0.1)
        got.append((arg, timeout))

    for _ in range(3):
        dog.call("commit_transaction", 0.05, slow_commit, "offsets")
    time.sleep(0.3)  # disarmed between calls: the monitor sees nothing overdue
    assert got == [("offsets", 0.05)] * 3
    assert exits == []


def test_assignment_guard_says_when_no_partition_was_held_too_long() -> None:
    now = [100.0]
    guard = AssignmentGuard(60.0, every_s=5.0, clock=lambda: now[0])
    assert guard.due() and not guard.due()  # at most every 5 s
    now[0] += 59
    assert guard.check(False) is None  # joining: not yet
    now[0] += 2
    assert guard.check(False) == 61.0  # never got partitions since it started
    assert guard.check(True) is None  # holding some: all clear
    now[0] += 100
    assert guard.check(False) is None  # lost them just now
    now[0] += 60.5
    assert guard.check(False) == 60.5
    now[0] += 5
    assert guard.due()
