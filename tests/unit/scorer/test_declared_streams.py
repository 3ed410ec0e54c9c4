"""The scorer and a declared stream, in-process (real int8 models, no Kafka): unscored until
its model appears, then scored with its declaration's alerts and labels; model acceptance
by the declaration's feature-spec digest; episode-state keys per stream."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.agent.store import ModelStore
from edge.config import EdgeConfig, ScorerSettings
from edge.scorer.errors import ModelError
from edge.scorer.model_runner import check_manifest
from edge.scorer.scorer import BatchResult, Out, ScorerService, episode_owner
from shared import streams, topics
from shared.contracts import Alert, ModelManifest, Scaling, Score, decode
from shared.declarations import digest
from shared.declarations.schema import Stream
from shared.features import model_features
from shared.signing import generate_private_key
from tests.declared_records import REEFER, declared, reefer_records, write_reefer
from tests.scorer_models import SyntheticFeatures, build_model_dir

T0 = 1_700_000_000.0


@pytest.fixture
def reefer(tmp_path: Path) -> Iterator[Stream]:
    with declared(write_reefer(tmp_path / "streams")) as streams:
        yield streams[REEFER]


@pytest.fixture(scope="module")
def reefer_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SyntheticFeatures]:
    """(model_dir, public_key, data) of a reefer model built for the declaration's digest."""
    root = tmp_path_factory.mktemp("reefer")
    with declared(write_reefer(root / "streams")) as streams:
        decl = streams[REEFER]
        data = SyntheticFeatures(REEFER, seed=3, names=decl.feature_names)
        model_dir, pub = build_model_dir(
            root / "model",
            REEFER,
            data,
            version="reefer-1",
            feature_spec=decl.feature_spec,
            epochs=20,
            key=generate_private_key(),
        )
    return model_dir, pub, data


def manifest(stream: str, spec: str, features: list[str]) -> ModelManifest:
    n = len(features)
    return ModelManifest(
        stream=stream,
        version="m-1",
        feature_spec=spec,
        features=features,
        scaling=Scaling(mean=[0.0] * n, scale=[1.0] * n),
        threshold=1.0,
        input_quant=(0.1, 0),
        output_quant=(0.1, 0),
        metrics={},
        data_range=(1.0, 2.0),
        created_ts=time.time(),
    )


def test_a_declared_streams_model_must_carry_its_declarations_digest(reefer: Stream) -> None:
    check_manifest(manifest(REEFER, reefer.feature_spec, reefer.feature_names), REEFER)
    with pytest.raises(ModelError) as err:
        check_manifest(manifest(REEFER, "fs-000000000000", reefer.feature_names), REEFER)
    assert str(err.value) == (
        f"model m-1 was built for feature spec 'fs-000000000000'; this gateway's declaration "
        f"of reefer (reefer.toml) computes '{reefer.feature_spec}'"
    )
    # The built-in streams' old hand-numbered spec is no digest of a declared stream's.
    with pytest.raises(ModelError, match="declaration of reefer"):
        check_manifest(manifest(REEFER, "fs3", reefer.feature_names), REEFER)
    with pytest.raises(ModelError, match=r"declaration of reefer \(reefer.toml\) produces"):
        check_manifest(manifest(REEFER, reefer.feature_spec, reefer.feature_names[::-1]), REEFER)


@pytest.mark.parametrize("stream", ["telemetry", "payments"])
def test_a_built_in_streams_model_carries_its_shipped_declarations_digest(
    stream: str, reefer: Stream
) -> None:
    """The built-in streams are declarations too: their models carry the digest, and a model
    built for another is refused with the declaration named."""
    shipped = streams.declaration_of(stream)
    names = shipped.feature_names
    assert shipped.feature_spec.startswith("fs-")
    check_manifest(manifest(stream, shipped.feature_spec, names), stream)
    with pytest.raises(ModelError) as err:
        check_manifest(manifest(stream, reefer.feature_spec, names), stream)
    assert str(err.value) == (
        f"model m-1 was built for feature spec '{reefer.feature_spec}'; this gateway's "
        f"declaration of {stream} ({shipped.source}) computes '{shipped.feature_spec}'"
    )


def test_a_model_of_the_old_numbered_spec_loads_while_it_means_the_shipped_declaration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Models trained before the digests carry "fs3": a gateway upgraded in place keeps
    scoring with its active model while the shipped declaration is the one fs3 meant, and
    refuses it once the declaration changes."""
    names = model_features("telemetry")
    check_manifest(manifest("telemetry", "fs3", names), "telemetry")
    monkeypatch.setitem(digest.NUMBERED, ("telemetry", "fs3"), "fs-000000000000")
    with pytest.raises(ModelError, match="computes 'fs-"):
        check_manifest(manifest("telemetry", "fs3", names), "telemetry")
    with pytest.raises(ModelError):
        check_manifest(manifest("telemetry", "fs2", names), "telemetry")


def test_episode_state_keys_name_their_stream() -> None:
    assert episode_owner("edge-1-scorer", "telemetry") == "edge-1-scorer@telemetry"
    assert episode_owner("edge-1-scorer", "reefer") == "edge-1-scorer@reefer"


def install(tmp_path: Path, model_dir: Path) -> ModelStore:
    """Install and activate a copy of ``model_dir`` as the agent does."""
    store = ModelStore(tmp_path / "models").start()
    staged = shutil.copytree(model_dir, tmp_path / "staged")
    store.activate(REEFER, store.install(staged, REEFER, "reefer-1"), "reefer-1")
    return store


def service(tmp_path: Path, pub: Path) -> ScorerService:
    config = EdgeConfig(
        data_dir=tmp_path, scorer=ScorerSettings(models_dir=tmp_path / "models", public_key=pub)
    )
    svc = ScorerService(config)
    svc.prepare()  # the built-in streams: the shipped baselines
    return svc


def test_a_declared_stream_passes_unscored_until_its_model_appears(
    tmp_path: Path, reefer: Stream, reefer_model: tuple[Path, Path, SyntheticFeatures]
) -> None:
    model_dir, pub, data = reefer_model
    svc = service(tmp_path, pub)
    assert REEFER in svc.specs and REEFER not in (svc.holders or {})
    out, result = Out(), BatchResult()
    svc.score_records(REEFER, reefer_records(data, "u1", "RT-0001", T0, 30), out, result)
    assert result.unscored == {REEFER: 30} and result.events == {} and out.records == []
    assert svc.reload_models(every_s=0) == []  # still no model: nothing to do, no error

    store = install(tmp_path, model_dir)  # what the agent does with an accepted model
    assert svc.reload_models(every_s=0) == [REEFER]
    svc._clock = lambda: T0 + 100  # noqa: SLF001 (the processing clock, for the sweep)
    out, result = Out(), BatchResult()
    records = reefer_records(
        data, "u2", "RT-0001", T0, 40, anomalous=range(10, 20)
    ) + reefer_records(data, "u2", "RT-0002", T0, 40, seed=5)
    svc.score_records(REEFER, records, out, result)
    svc._sweep(out, result)  # noqa: SLF001 (writes the episode state)
    assert result.unscored == {} and result.events == {REEFER: 80}

    scores = [decode(Score, v) for t, _k, v in out.records if t == "scores.reefer" and v]
    assert len(scores) == 80
    odd = [s for s in scores if s.token == "RT-0001" and 10 <= int(s.event_id.rsplit("-")[-1]) < 20]
    assert all(s.anomalous and s.score > s.threshold and s.model_version == "reefer-1" for s in odd)
    alerts = [decode(Alert, v) for t, _k, v in out.records if t == topics.ALERTS and v]
    assert [a.state for a in alerts] == ["open", "closed"], alerts
    assert {a.token for a in alerts} == {"RT-0001"} and {a.stream for a in alerts} == {REEFER}
    labels = {f.label for f in reefer.features}
    top = alerts[-1].top_features
    assert len(top) == 3 and {c.feature for c in top} <= labels, top

    # Its episode state is written under the stream's own key and restores into its tracker.
    state = [(k, v) for t, k, v in out.records if t == topics.SCORER_EPISODES]
    assert state and all(
        k is not None and k.decode().startswith(f"{svc.group_id}@reefer/") for k, _v in state
    )
    again = service(tmp_path, pub)
    svc.trackers[REEFER].observe("RT-0003", "e-1", T0, 9.0, 1.0, "reefer-1", lambda: [])
    for token, value in svc.trackers[REEFER].drain_dirty().items():
        assert again.restore_episode(f"{svc.group_id}@reefer/{token}".encode(), value, T0)
    assert set(again.trackers[REEFER].states) == {"RT-0003"}
    assert again.trackers["telemetry"].states == {}  # telemetry's tracker took none of it
    # Telemetry's state keeps the key it always had.
    svc.trackers["telemetry"].observe("veh-token-1", "t-1", T0, 9.0, 1.0, "v", lambda: [])
    for token, value in svc.trackers["telemetry"].drain_dirty().items():
        assert again.restore_episode(f"{svc.group_id}/{token}".encode(), value, T0)
    assert set(again.trackers["telemetry"].states) == {"veh-token-1"}
    assert not again.restore_episode(b"other-scorer/veh-token-1", b"{}", T0)

    # The agent rolls the first model back (to none): the stream passes unscored again.
    store.activate(REEFER, None, None)
    assert svc.reload_models(every_s=0) == [REEFER]
    out, result = Out(), BatchResult()
    svc.score_records(REEFER, reefer_records(data, "u3", "RT-0001", T0, 5), out, result)
    assert result.unscored == {REEFER: 5} and out.records == []


def test_event_alerts_raise_one_alert_per_anomalous_event(
    tmp_path: Path, reefer_model: tuple[Path, Path, SyntheticFeatures]
) -> None:
    model_dir, pub, data = reefer_model
    directory = write_reefer(tmp_path / "streams", alerts='kind = "event"')
    with declared(directory) as streams:
        decl = streams[REEFER]
        svc = service(tmp_path, pub)
        assert REEFER not in svc.trackers
        install(tmp_path, model_dir)
        assert svc.reload_models(every_s=0) == [REEFER]
        out, result = Out(), BatchResult()
        svc.score_records(
            REEFER,
            reefer_records(data, "e1", "RT-0001", T0, 20, anomalous=range(5, 8)),
            out,
            result,
        )
        alerts = [decode(Alert, v) for t, _k, v in out.records if t == topics.ALERTS and v]
        assert len(alerts) == result.anomalous[REEFER] >= 3
        assert {a.state for a in alerts} == {"closed"} and all(
            len(a.event_ids) == 1 for a in alerts
        )
        labels = {f.label for f in decl.features}
        assert all({c.feature for c in a.top_features} <= labels for a in alerts)


def test_every_episode_stream_takes_its_declared_rule_and_the_gateways_overrides(
    reefer: Stream,
) -> None:
    from edge.episode_rules import episode_rules

    rules = episode_rules(ScorerSettings())
    assert set(rules) == {"telemetry", REEFER}  # payments: one alert per anomalous event
    assert (rules["telemetry"].open_events, rules["telemetry"].quiet_gap_s) == (4, 30.0)
    assert (rules[REEFER].open_events, rules[REEFER].quiet_gap_s) == (4, 5.0)  # declared
    quick = episode_rules(ScorerSettings(episode_quiet_gap_s=2.0, episode_update_interval_s=1.0))
    assert {r.quiet_gap_s for r in quick.values()} == {2.0}
    assert quick[REEFER].open_window_s == 10.0 and quick[REEFER].update_interval_s == 1.0
    svc = ScorerService(EdgeConfig(scorer=ScorerSettings(episode_open_events=2)))
    assert {n: t.settings.open_events for n, t in svc.trackers.items()} == {
        "telemetry": 2,
        REEFER: 2,
    }
