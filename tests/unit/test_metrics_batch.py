"""Batched metrics give exactly what one call per event gives."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Counter, Histogram

from edge.metrics import LATENCY_BUCKETS, CountBatch, HistogramBatch


def _samples(h: Histogram) -> dict[tuple[str, str], float]:
    out = {}
    for metric in h.collect():
        for s in metric.samples:
            out[(s.name, s.labels.get("le", ""))] = s.value
    return out


def _pair() -> tuple[Histogram, Histogram]:
    reg = CollectorRegistry()
    return (
        Histogram("one_by_one", "x", buckets=LATENCY_BUCKETS, registry=reg),
        Histogram("batched", "x", buckets=LATENCY_BUCKETS, registry=reg),
    )


def _values() -> list[float]:
    rng = random.Random(3)
    # every bound exactly, just above it, spread values, negatives, infinities and a NaN
    return [
        *LATENCY_BUCKETS,
        *(b + 1e-12 for b in LATENCY_BUCKETS),
        -1.0,
        0.0,
        math.inf,
        1e9,
        math.nan,
    ] + [rng.expovariate(5.0) for _ in range(5000)]


def _same(one: Histogram, batched: Histogram) -> None:
    a = {(n.replace("one_by_one", "h"), le): v for (n, le), v in _samples(one).items()}
    b = {(n.replace("batched", "h"), le): v for (n, le), v in _samples(batched).items()}
    assert a.keys() == b.keys()
    for key in a:
        if math.isnan(a[key]):
            continue  # the sum after a NaN (observe) vs without it (batch): see the docstring
        assert math.isclose(a[key], b[key], rel_tol=1e-9), key


def test_histogram_batch_matches_observe() -> None:
    one, batched = _pair()
    values = [v for v in _values() if not math.isnan(v)]
    batch = HistogramBatch(batched)
    for chunk in (values[:10], values[10:3000], [], values[3000:]):
        for v in chunk:
            one.observe(v)
        batch.values.extend(chunk)
        batch.flush()
    assert batch.values == []
    _same(one, batched)
    counts = _samples(batched)
    assert counts[("batched_count", "")] == len(values)


def test_nan_is_counted_in_no_bucket() -> None:
    one, batched = _pair()
    batch = HistogramBatch(batched)
    batch.values += [0.01, math.nan]
    batch.flush()
    one.observe(0.01)
    one.observe(math.nan)
    got, want = _samples(batched), _samples(one)
    assert got[("batched_count", "")] == want[("one_by_one_count", "")] == 1
    assert got[("batched_sum", "")] == 0.01


def test_fallback_without_internals_observes_each_value() -> None:
    seen: list[float] = []

    class Child:
        def observe(self, v: float) -> None:
            seen.append(v)

    batch = HistogramBatch(Child())
    batch.values += [0.1, 0.2]
    batch.flush()
    assert seen == [0.1, 0.2]


def test_count_batch() -> None:
    c = Counter("c", "x", registry=CollectorRegistry())
    batch = CountBatch(c)
    batch.n += 3
    batch.flush()
    batch.flush()
    batch.n += 2
    batch.flush()
    assert c._value.get() == 5 and batch.n == 0
