"""Training data: anonymized records of one stream as a feature matrix plus what evaluation needs.

Records come either from simulator dry-run files (raw MQTT payloads passed through the shared
anonymizer, exactly as the edge enricher does) or from anonymized Kafka topics. Labels join on
``event_id``; an event without a label is presumed normal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np
from numpy.typing import NDArray

from cloud.trainer.errors import TrainerError
from shared import streams
from shared.contracts import AnyAnon, Label
from shared.declarations.memory import memory_s as declared_memory_s
from shared.errors import ContractError
from shared.features import Anonymizer, feature_vector, model_features
from shared.tokens import Tokenizer

if TYPE_CHECKING:
    from shared.declarations.schema import Stream

# Tokens only group events of one vehicle or card while training from files; any fleet secret
# works, so files are anonymized under a fixed one unless the operator passes theirs.
DEFAULT_TRAINING_SECRET = b"fleetsentry-offline-training"


def key_of(stream: str) -> Callable[[AnyAnon], str]:
    """The token a stream's alert episodes are keyed by, read from its anon records (its
    ``anon_key``: the vehicle's for telemetry, the card's for payments, a declared stream's
    record key)."""
    return attrgetter(streams.get(stream).anon_key)


def declaration(stream: str) -> Stream | None:
    """A declared stream's declaration (registered by ``streams.use_declarations``); None for
    the built-in streams."""
    return streams.get(stream).declaration


def stream_features(stream: str) -> list[str]:
    """The model's input features, in order: the declaration's, or the built-in code's."""
    decl = declaration(stream)
    return list(decl.feature_names) if decl is not None else list(model_features(stream))


@dataclass
class Records:
    """One stream's records, row-aligned: features and the columns evaluation joins on."""

    stream: str
    features: list[str]
    x: NDArray[np.float32]
    event_ids: NDArray[Any]
    ts: NDArray[np.float64]
    tokens: NDArray[Any]
    kinds: NDArray[Any]  # "" for events without a label
    episodes: NDArray[Any]
    rejected: int = 0  # malformed messages skipped while reading

    def __len__(self) -> int:
        return int(self.ts.size)

    @property
    def labelled(self) -> NDArray[np.bool_]:
        return self.kinds != ""

    def take(self, idx: NDArray[Any]) -> Records:
        return Records(
            self.stream,
            self.features,
            self.x[idx],
            self.event_ids[idx],
            self.ts[idx],
            self.tokens[idx],
            self.kinds[idx],
            self.episodes[idx],
            self.rejected,
        )


class RecordBuilder:
    """Accumulates anon records of one stream, then freezes them into :class:`Records`."""

    def __init__(self, stream: str, labels: dict[str, Label]) -> None:
        self.stream = stream
        self.features = stream_features(stream)
        self._declared = declaration(stream) is not None
        self._key = key_of(stream)
        self.labels = labels
        self._rows: list[NDArray[np.float32]] = []
        self._meta: list[tuple[str, float, str, str, str]] = []

    def add(self, record: AnyAnon) -> None:
        label = self.labels.get(record.event_id)
        if self._declared:
            feats = record.features
            self._rows.append(
                np.array([feats.get(n, 0.0) for n in self.features], dtype=np.float32)
            )
        else:
            self._rows.append(feature_vector(self.stream, record))
        self._meta.append(
            (
                record.event_id,
                record.ts,
                self._key(record),
                label.kind if label else "",
                label.episode_id if label else "",
            )
        )

    def build(self) -> Records:
        n = len(self._rows)
        x = np.vstack(self._rows) if n else np.zeros((0, len(self.features)), np.float32)
        cols = list(zip(*self._meta, strict=True)) if n else [(), (), (), (), ()]
        return Records(
            stream=self.stream,
            features=self.features,
            x=x.astype(np.float32),
            event_ids=np.array(cols[0], dtype=object),
            ts=np.array(cols[1], dtype=np.float64),
            tokens=np.array(cols[2], dtype=object),
            kinds=np.array(cols[3], dtype=object),
            episodes=np.array(cols[4], dtype=object),
        )


def records_from_messages(
    messages: Iterable[tuple[str, bytes]],
    labels: Iterable[Label],
    tokenizer: Tokenizer | None = None,
    on_progress: Any = None,
) -> dict[str, Records]:
    """Anonymize raw MQTT messages in publish order, as the edge does; one Records per stream.

    ``on_progress(n)`` is called every 10,000 messages. Malformed payloads are counted and
    skipped (the edge would send them to the dead-letter topic), never silently trained on.
    """
    label_map = {lab.event_id: lab for lab in labels}
    anonymizer = Anonymizer(tokenizer or Tokenizer(DEFAULT_TRAINING_SECRET))
    builders = {s.name: RecordBuilder(s.name, label_map) for s in streams.all_streams()}
    rejected = 0
    for n, (topic, payload) in enumerate(messages, 1):
        spec = streams.by_mqtt_suffix(topic.rsplit("/", 1)[-1])
        if spec is None:
            continue  # status and command topics carry no events to learn from
        try:
            record = anonymizer.message(topic, payload)
        except ContractError:
            rejected += 1
            continue
        builders[spec.name].add(record)
        if on_progress is not None and n % 10_000 == 0:
            on_progress(n)
    out = {name: b.build() for name, b in builders.items()}
    for r in out.values():
        r.rejected = rejected
    return out


def records_from_anon(stream: str, records: Iterable[AnyAnon], labels: Iterable[Label]) -> Records:
    """Records from already anonymized events (e.g. read from ``anon.<stream>``)."""
    builder = RecordBuilder(stream, {lab.event_id: lab for lab in labels})
    for record in records:
        builder.add(record)
    return builder.build()


def memory_s(records: Records) -> float:
    """Seconds after an episode ends during which the stream's features still carry it
    (``shared.declarations.memory``): at the stream's declared ``interval_s``, else at its
    devices' typical (median) interval between events in ``records``."""
    decl = streams.declaration_of(records.stream)
    interval = decl.interval_s if decl.interval_s is not None else median_interval_s(records)
    return declared_memory_s(decl, interval)


def median_interval_s(records: Records) -> float:
    """The median time between one key's consecutive events (0 with fewer than two)."""
    if len(records) < 2:
        return 0.0
    order = np.lexsort((records.ts, records.tokens.astype(str)))
    tok, t = records.tokens[order], records.ts[order]
    same = tok[1:] == tok[:-1]
    gaps = np.diff(t)[same]
    return float(np.median(gaps)) if gaps.size else 0.0


# --- dry-run files -----------------------------------------------------------------------


class _Line(msgspec.Struct):
    topic: str
    payload: msgspec.Raw


def read_events_file(path: Path) -> Iterator[tuple[str, bytes]]:
    """(topic, exact payload bytes) from a ``sim run --dry-run`` events file."""
    decoder = msgspec.json.Decoder(_Line)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, generator-owned
    except OSError as exc:
        raise TrainerError(f"cannot read events file {path}: {exc.strerror}") from None
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise TrainerError(f"{path}:{lineno}: not an events line ({exc})") from None
            yield item.topic, bytes(item.payload)


def read_labels_file(path: Path) -> list[Label]:
    decoder = msgspec.json.Decoder(Label)
    out: list[Label] = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as exc:
        raise TrainerError(f"cannot read labels file {path}: {exc.strerror}") from None
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            try:
                out.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise TrainerError(f"{path}:{lineno}: not a label ({exc})") from None
    return out


# --- splits ------------------------------------------------------------------------------


def vehicle_split(records: Records, fractions: tuple[float, float, float]) -> tuple[Records, ...]:
    """Train / validation / holdout by key (vehicle or card): each judged on keys it never saw.

    Every key falls wholly into one split, so the threshold and the holdout figures speak for
    a fleet the model was not fitted on, at every time of day the data covers (a time split of
    a few hours' data would test one part of the day only). The split is stratified: keys with
    a labelled event and keys without are each ordered by a hash of their token and dealt out
    by the fractions, so each split gets its share of the (rare) labelled keys. Of the
    labelled keys the holdout gets at least one and the validation split at least one of the
    rest: the model fits normal frames only, so labelled keys count where the threshold is
    set and the model is judged.
    """
    if len(records) == 0:
        raise TrainerError(f"no {records.stream} records to train on")
    cuts = np.cumsum(fractions)[:-1] / sum(fractions)
    keys = np.unique(records.tokens)
    if keys.size < 3:
        raise TrainerError(
            f"a split by vehicle needs at least 3 keys; {records.stream} has {keys.size}"
        )
    labelled_keys = set(records.tokens[records.labelled].tolist())

    def ranked(group: list[Any]) -> list[Any]:
        return sorted(group, key=lambda k: hashlib.sha256(str(k).encode()).digest())

    part_of: dict[Any, int] = {}
    plain = ranked([k for k in keys.tolist() if k not in labelled_keys])
    # The i-th of n keys sits at (i + 0.5) / n: the fractions hold for every group size.
    u = (np.arange(len(plain)) + 0.5) / max(1, len(plain))
    part_of.update(zip(plain, np.searchsorted(cuts, u, side="right").tolist(), strict=True))
    marked = ranked([k for k in keys.tolist() if k in labelled_keys])
    n, total = len(marked), sum(fractions)
    hold = max(1, round(n * fractions[2] / total)) if n else 0
    val = min(max(1, round(n * fractions[1] / total)) if n > 1 else 0, n - hold)
    for i, k in enumerate(marked):
        part_of[k] = 2 if i < hold else 1 if i < hold + val else 0
    part = np.array([part_of[t] for t in records.tokens.tolist()])
    return tuple(records.take(np.flatnonzero(part == i)) for i in range(3))


def time_split(records: Records, fractions: tuple[float, float, float]) -> tuple[Records, ...]:
    """Train / validation / holdout by event time: the model is judged on data after it."""
    if len(records) == 0:
        raise TrainerError(f"no {records.stream} records to train on")
    cuts = np.cumsum(fractions)[:-1] / sum(fractions)
    bounds = np.quantile(records.ts, cuts)
    part = np.searchsorted(bounds, records.ts, side="right")
    return tuple(records.take(np.flatnonzero(part == i)) for i in range(3))
