"""The enricher's changelog topic: per-key feature state and dedup deltas, and its restore.

Keys: ``v:|c:|d:<token>`` hold a key's latest feature state (msgpack), or a tombstone once it
expired; ``dedup:<topic>:<partition>:<seq>`` hold one committed batch's event keys. Both are
written in the same transaction as the anon records and the consumed offsets, so what is read
back always matches the offsets. A state record's timestamp (the enricher's wall clock when it
wrote it) tells a restore when the key was last seen.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import msgspec
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from edge.enricher.dedup import DedupWindow
from edge.enricher.errors import EnricherError
from shared.features import FeatureState, decode_state
from shared.kafka_config import Target
from shared.kafka_read import read_to_end
from shared.topics import ENRICHER_STATE

DEDUP_PREFIX = "dedup:"
_ids_encoder = msgspec.msgpack.Encoder()
_ids_decoder = msgspec.msgpack.Decoder(list[str])


def dedup_key(topic: str, partition: int, seq: int) -> bytes:
    return f"{DEDUP_PREFIX}{topic}:{partition}:{seq:012d}".encode()


def encode_ids(ids: list[str]) -> bytes:
    return _ids_encoder.encode(ids)


class Restored(NamedTuple):
    state: FeatureState
    windows: dict[tuple[str, int], DedupWindow]
    written: dict[str, float]  # state key -> when its latest record was written (epoch s)


def restore(
    kafka: Target, dedup_limit: int, timeout_s: float = 120.0, topic: str = ENRICHER_STATE
) -> Restored:
    """Read the changelog to its end (committed records only) and rebuild state and windows."""
    states: dict[str, Any] = {}
    written: dict[str, float] = {}
    started = time.time()
    deltas: dict[tuple[str, int], dict[int, list[str]]] = {}

    def handle(msg: Message) -> None:
        key = (msg.key() or b"").decode()
        _apply(key, msg.value(), states, deltas)
        if key in states:
            kind, ms = msg.timestamp()
            written[key] = ms / 1000 if kind != TIMESTAMP_NOT_AVAILABLE else started

    read_to_end(
        kafka,
        topic,
        handle,
        error=EnricherError,
        timeout_s=timeout_s,
        missing_hint="run `fleetsentry infra up`",
    )
    windows: dict[tuple[str, int], DedupWindow] = {}
    for tp, by_seq in deltas.items():
        window = windows[tp] = DedupWindow(dedup_limit)
        for seq in sorted(by_seq):
            window.load(seq, by_seq[seq])
    return Restored(
        FeatureState(states), windows, {k: t for k, t in written.items() if k in states}
    )


def _apply(
    key: str,
    value: bytes | None,
    states: dict[str, Any],
    deltas: dict[tuple[str, int], dict[int, list[str]]],
) -> None:
    if key.startswith(DEDUP_PREFIX):
        raw_topic, partition, seq = key[len(DEDUP_PREFIX) :].rsplit(":", 2)
        by_seq = deltas.setdefault((raw_topic, int(partition)), {})
        if value is None:
            by_seq.pop(int(seq), None)
        else:
            by_seq[int(seq)] = _ids_decoder.decode(value)
    elif value is None:
        states.pop(key, None)
    else:
        states[key] = decode_state(value)
