"""The sign-in throttle on its own, with a clock the test moves."""

from __future__ import annotations

from cloud.dashboard.throttle import SignInThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_name_locks_after_five_failures_and_unlocks_after_the_lockout() -> None:
    clock = Clock()
    t = SignInThrottle(max_failures=5, per_address=20, window_s=900, lockout_s=900, clock=clock)
    for _ in range(5):
        assert t.retry_after("alice", "10.0.0.1") is None
        t.attempt("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") == 900
    assert t.retry_after("alice", "10.0.0.2") == 900  # the name, from anywhere
    clock.now += 600
    assert t.retry_after("alice", "10.0.0.1") == 300
    clock.now += 300
    assert t.retry_after("alice", "10.0.0.1") is None


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    t = SignInThrottle(max_failures=5, per_address=20, window_s=900, lockout_s=900, clock=clock)
    for _ in range(4):
        t.attempt("alice", "10.0.0.1")
    clock.now += 901
    for _ in range(4):
        t.attempt("alice", "10.0.0.1")
    assert t.retry_after("alice", "10.0.0.1") is None


def test_a_success_clears_the_name_and_gives_the_address_its_attempt_back() -> None:
    clock = Clock()
    t = SignInThrottle(max_failures=5, per_address=6, window_s=900, lockout_s=900, clock=clock)
    for _ in range(4):
        t.attempt("alice", "10.0.0.1")
    t.attempt("alice", "10.0.0.1")
    t.succeeded("alice", "10.0.0.1")  # the fifth was right: no lock
    assert t.retry_after("alice", "10.0.0.1") is None
    t.attempt("bob", "10.0.0.1")
    t.attempt("bob", "10.0.0.1")
    assert t.retry_after("carol", "10.0.0.1") == 900  # 4 + 2 failures from one address


def test_an_attacker_cycling_names_cannot_grow_it_without_bound() -> None:
    clock = Clock()
    t = SignInThrottle(
        max_failures=5, per_address=20, window_s=900, lockout_s=900, max_tracked=1000, clock=clock
    )
    for i in range(50_000):
        t.attempt(f"name{i}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(t) <= 1000
    # Locks are the last thing forgotten: a locked name outlives a flood of one-off names.
    for _ in range(5):
        t.attempt("alice", "192.0.2.1")
    for i in range(50_000):
        t.attempt(f"other{i}", f"172.16.{i // 256 % 256}.{i % 256}")
    assert len(t) <= 1000
    assert t.retry_after("alice", "192.0.2.2") == 900
