"""The disk plan: one budget shared out, every edge topic bounded, state topics never cut by size."""

from __future__ import annotations

import pytest

from edge import disk
from edge.config import AgentSettings, DiskSettings, EdgeConfig, EnricherSettings, parse_size
from shared import streams, topics
from shared.config import convert
from shared.errors import ConfigError

GIB = 1 << 30


def config(budget: str, **kw: object) -> EdgeConfig:
    return EdgeConfig(disk=DiskSettings(budget=budget), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("budget", ["20 GiB", "2 GiB", "300 GiB", "512 MiB"])
def test_the_shares_add_up_to_no_more_than_the_budget(budget: str) -> None:
    p = disk.plan(config(budget))
    assert sum(n for _, n in p.rows()) <= p.budget_bytes
    assert p.kafka_bytes + p.headroom_bytes + p.spool_bytes <= p.budget_bytes
    assert p.spool_bytes >= p.budget_bytes // 20
    assert {t.name for t in p.topics} == {t.name for t in topics.registry("edge")}
    for t in p.topics:
        if t.retention_bytes >= 0:
            # Per partition: what is kept plus the segment Kafka cannot delete yet.
            assert (t.retention_bytes + t.segment_bytes) * t.partitions <= t.reserved_bytes
            assert t.segment_bytes >= disk.MIN_SEGMENT_BYTES
            assert t.retention_bytes >= 2 * t.segment_bytes
        assert disk.MIN_SEGMENT_BYTES <= t.segment_bytes <= disk.MAX_SEGMENT_BYTES


def test_time_retention_stays_and_state_topics_are_cut_by_time_only() -> None:
    cfg = config("20 GiB")
    p = disk.plan(cfg)
    registry = {t.name: t for t in topics.registry("edge")}
    for name in (topics.RAW_TELEMETRY, topics.RAW_PAYMENTS, topics.DLQ_INGEST):
        assert p.topic(name).configs()["retention.ms"] == str(topics.RAW_RETENTION_MS)
    assert (
        p.topic(topics.ANON_TELEMETRY).retention_ms == registry[topics.ANON_TELEMETRY].retention_ms
    )
    state = p.topic(topics.ENRICHER_STATE).configs()
    assert state["cleanup.policy"] == "compact,delete"
    assert state["retention.bytes"] == "-1"
    # Well above the TTL: a live key is rewritten within it, so its newest record stays.
    assert int(state["retention.ms"]) >= 2 * cfg.enricher.state_ttl_s * 1000
    assert int(state["retention.ms"]) > (
        cfg.bridge.session_expiry_s * 1000 + topics.RAW_RETENTION_MS
    )
    # Models: never cut by time (a champion may be old), but by size: compaction keeps a
    # record per key for ever, and keys can be invented.
    models = p.topic(topics.CLOUD_MODELS)
    assert models.configs()["cleanup.policy"] == "compact,delete"
    assert models.configs()["retention.ms"] == "-1"
    kept = len(streams.all_streams()) * cfg.agent.keep_versions * disk.MODEL_BYTES
    assert models.retention_bytes == kept
    assert models.reserved_bytes == kept + 2 * models.segment_bytes
    assert p.topic(topics.SCORER_EPISODES).configs()["retention.bytes"] == "-1"


def test_a_longer_ttl_and_more_kept_versions_get_their_room() -> None:
    base = disk.plan(config("20 GiB"))
    longer = disk.plan(
        config(
            "20 GiB",
            enricher=EnricherSettings(state_ttl_s=30 * 86_400.0),
            agent=AgentSettings(keep_versions=20),
        )
    )
    assert (
        longer.topic(topics.ENRICHER_STATE).retention_ms
        == 60 * 86_400 * 1000
        > base.topic(topics.ENRICHER_STATE).retention_ms
    )
    assert longer.models_bytes > base.models_bytes
    assert (
        longer.topic(topics.CLOUD_MODELS).reserved_bytes
        > base.topic(topics.CLOUD_MODELS).reserved_bytes
    )


def test_a_bigger_budget_never_shrinks_a_share() -> None:
    small, big = disk.plan(config("4 GiB")), disk.plan(config("40 GiB"))
    for t in small.topics:
        assert big.topic(t.name).reserved_bytes >= t.reserved_bytes


def test_a_budget_too_small_names_the_setting_and_what_would_do() -> None:
    with pytest.raises(ConfigError) as err:
        disk.plan(config("100 MiB"))
    assert err.value.setting == "disk.budget"
    assert "at least" in str(err.value)
    least = str(err.value).split("at least ")[1]
    disk.plan(config(least.replace(" ", "")))  # what it names is enough


def test_the_budget_is_validated_when_the_config_is_read() -> None:
    assert convert({"disk": {"budget": "1.5 TiB"}}, EdgeConfig).disk.budget_bytes == int(
        1.5 * (1 << 40)
    )
    assert parse_size("20GB") == 20 * 1000**3
    with pytest.raises(ConfigError) as err:
        convert({"disk": {"budget": "twenty gigs"}}, EdgeConfig, source="edge.toml")
    assert err.value.setting == "disk.budget"
