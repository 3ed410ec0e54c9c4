"""The watchdog over transactional calls: a call stuck past its own timeout ends the process.
And what a transaction does with each kind of commit error librdkafka reports."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from edge.transactions import (
    EXIT_STUCK,
    TXN_ATTEMPTS,
    AssignmentGuard,
    KafkaLoss,
    Transactions,
    Watchdog,
)


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
    # Past its own timeout, well within the grace even on a loaded machine.
    dog = Watchdog("scorer", grace_s=5.0, tick_s=0.01, on_stuck=exits.append)
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


def test_a_guarded_call_still_running_after_a_stop_was_asked_for_ends_the_process() -> None:
    """SIGTERM while a commit waits for a Kafka that is away: the process ends (exit 0) long
    before the call's own timeout and the supervisor's grace."""
    stops: list[int] = []
    ended = threading.Event()

    def on_stop(code: int) -> None:
        stops.append(code)
        ended.set()

    stop = threading.Event()
    dog = Watchdog("enricher", grace_s=30, tick_s=0.02, stop_wait_s=0.2, on_stop=on_stop)
    dog.watch_stop(stop)

    def waits_for_kafka(timeout: float) -> None:  # commit_transaction(60) with Kafka away
        stop.set()  # the SIGTERM arrives during the call
        ended.wait(timeout)

    started = time.monotonic()
    dog.call("commit_transaction", 10.0, waits_for_kafka)
    assert stops == [0]
    assert time.monotonic() - started < 5.0


def test_a_stop_with_no_call_or_a_quick_one_is_left_to_the_service() -> None:
    stops: list[int] = []
    stop = threading.Event()
    dog = Watchdog("scorer", tick_s=0.01, stop_wait_s=0.3, on_stop=stops.append)
    dog.watch_stop(stop)
    stop.set()
    time.sleep(0.1)
    dog.call("commit_transaction", 10.0, lambda timeout: time.sleep(0.05))
    time.sleep(0.5)
    assert stops == []


class Producer:
    """Records the transactional calls; ``commit_transaction`` raises the given errors first."""

    def __init__(self, errors: list[KafkaError], abort_errors: list[KafkaError]) -> None:
        self.errors, self.abort_errors = errors, abort_errors
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.errors:
            raise KafkaException(self.errors.pop(0))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        if self.abort_errors:
            raise KafkaException(self.abort_errors.pop(0))

    def poll(self, timeout: float) -> int:
        self.calls.append("poll")
        return 0

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self.calls.append("offsets")

    down = 0  # list_topics fails this many more times (the broker is not back yet)

    def list_topics(self, timeout: float) -> object:
        self.calls.append("metadata")
        if self.down:
            self.down -= 1
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "connection refused"))
        return object()


class Consumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("raw.telemetry", 0)]

    def committed(self, parts: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(p.topic, p.partition, 41) for p in parts]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def consumer_group_metadata(self) -> object:
        return object()


class Broken(Exception):
    pass


def _txn(
    errors: list[KafkaError], abort_errors: list[KafkaError] | None = None
) -> tuple[Transactions, Producer, Consumer, list[str]]:
    producer, consumer, rewound = Producer(errors, abort_errors or []), Consumer(), list[str]()
    dog = Watchdog("enricher", grace_s=5, tick_s=0.05, on_stuck=lambda code: None)
    txn = Transactions(
        "enricher",
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        dog,
        lambda: rewound.append("rewind"),
        Broken,
    )
    return txn, producer, consumer, rewound


def _work() -> tuple[str, list[Any]]:
    return "done", []


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "120 message(s) remaining", retriable=True)


def test_a_commit_that_timed_out_is_asked_for_again_and_the_batch_stands() -> None:
    txn, producer, consumer, rewound = _txn([TIMED_OUT])
    assert txn.run(_work) == "done"
    # Delivery reports served before each try.
    assert producer.calls == ["begin", "poll", "commit", "poll", "commit"]
    assert txn.aborted == 0 and not rewound and not consumer.seeks


def test_a_commit_that_keeps_timing_out_or_must_abort_is_aborted_and_rewound() -> None:
    for errors in (
        [TIMED_OUT] * TXN_ATTEMPTS,
        [KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, txn_requires_abort=True)],
    ):
        txn, producer, consumer, rewound = _txn(list(errors))
        assert txn.run(_work) is None
        assert producer.calls[-1] == "abort" and txn.aborted == 1
        assert rewound == ["rewind"] and consumer.seeks == [("raw.telemetry", 0, 41)]


def test_a_fatal_commit_error_ends_the_service() -> None:
    txn, producer, _, rewound = _txn([KafkaError(KafkaError._FENCED, fatal=True)])
    with pytest.raises(Broken, match="cannot be aborted"):
        txn.run(_work)
    assert "abort" not in producer.calls and not rewound


def test_an_abort_that_timed_out_is_asked_for_again_and_one_that_never_ends_stops_it() -> None:
    must_abort = KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, txn_requires_abort=True)
    txn, producer, _, rewound = _txn([must_abort], [TIMED_OUT])
    assert txn.run(_work) is None
    assert producer.calls[-4:] == ["poll", "abort", "poll", "abort"] and rewound == ["rewind"]
    txn, producer, _, rewound = _txn([must_abort], [TIMED_OUT] * TXN_ATTEMPTS)
    with pytest.raises(Broken, match="could not be aborted"):
        txn.run(_work)
    assert producer.calls.count("abort") == TXN_ATTEMPTS and not rewound


def test_a_produce_refused_for_the_transactions_state_aborts_the_batch() -> None:
    """``_STATE`` from ``produce``: the broker refused an earlier record of the batch. Aborted
    and rewound; were the producer past saving, the abort's own failure stops the service."""
    refused = KafkaError(KafkaError._STATE, "Unable to produce message: Local: Erroneous state")

    def work() -> tuple[str, list[Any]]:
        raise KafkaException(refused)

    txn, producer, consumer, rewound = _txn([])
    assert txn.run(work) is None
    assert producer.calls[-1] == "abort" and rewound == ["rewind"] and consumer.seeks
    txn, producer, _, rewound = _txn([], [KafkaError(KafkaError._FENCED, fatal=True)])
    with pytest.raises(Broken, match="could not be aborted"):
        txn.run(work)
    assert not rewound


def test_after_every_broker_went_away_the_next_commit_waits_for_kafka_then_starts_afresh() -> None:
    """Its offsets are not sent: that call can hang on the coordinator the client remembers
    from before the outage. The process ends (to be started again) once Kafka is back."""
    producer, consumer, exits = Producer([], []), Consumer(), list[int]()
    loss = KafkaLoss("enricher")
    loss.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))  # before its first transaction
    txn = Transactions(
        "enricher",
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        Watchdog("enricher", grace_s=5, tick_s=0.05, on_stuck=exits.append),
        lambda: None,
        Broken,
        loss=loss,
        back_every_s=0.01,
    )
    offsets = [TopicPartition("raw.telemetry", 0, 42)]
    assert txn.run(lambda: ("done", offsets)) == "done" and not exits  # start-up: no loss
    assert "offsets" in producer.calls
    loss.on_error(KafkaError(KafkaError._TRANSPORT, "one connection closed"))
    assert txn.run(lambda: ("done", offsets)) == "done" and not exits
    loss.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    producer.calls.clear()
    producer.down = 2
    with pytest.raises(Broken, match="went away"):
        txn.run(lambda: ("done", offsets))
    assert exits == [EXIT_STUCK]
    assert producer.calls == ["begin", "poll", "metadata", "metadata", "metadata"]


def test_a_stop_asked_for_while_waiting_for_kafka_after_a_loss_ends_the_wait() -> None:
    """The wait for Kafka after every broker went away looks at the service's stop flag
    between tries: a SIGTERM then ends the process instead of waiting for Kafka."""
    producer, consumer, stops = Producer([], []), Consumer(), list[int]()
    loss = KafkaLoss("enricher")
    stop = threading.Event()
    dog = Watchdog("enricher", grace_s=5, tick_s=0.05, on_stop=stops.append)
    dog.watch_stop(stop)
    txn = Transactions(
        "enricher",
        producer,  # type: ignore[arg-type]
        consumer,  # type: ignore[arg-type]
        dog,
        lambda: None,
        Broken,
        loss=loss,
        back_every_s=0.01,
    )
    offsets = [TopicPartition("raw.telemetry", 0, 42)]
    loss.on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    producer.down = 10**9  # Kafka never comes back

    def work() -> tuple[str, list[TopicPartition]]:
        threading.Timer(0.1, stop.set).start()
        return "done", offsets

    with pytest.raises(Broken, match="told to stop"):
        txn.run(work)
    assert stops == [0]
    assert "offsets" not in producer.calls and "commit" not in producer.calls
