"""A stream declared in the cloud's ``[streams] dir`` (here only in this test's directory) is
served like the built-in ones: the trainer service trains it without labels, the dashboard
offers to retrain it and records an operator's request, and the signer carries the request out
with the real trainer (TensorFlow, int8) and a real registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cloud.dashboard.app import create_app
from cloud.registry import Registry
from cloud.signer.signer import SigningService
from cloud.trainer.pipeline import TrainSettings
from cloud.trainer_service.trainer_service import RetrainSettings, TrainerService
from shared import signing, streams
from shared.errors import ConfigError
from shared.features import Anonymizer
from shared.tokens import Tokenizer
from tests import declared_stream as reefer
from tests.dashboard_support import MemorySource
from tests.unit.dashboard_app.test_dashboard_attacks import make_dashboard, sign_in

SMALL = TrainSettings(epochs=2, hidden=(16, 6), seed=5)


@pytest.fixture()
def declared(tmp_path: Path) -> Iterator[str]:
    reefer.write_declaration(tmp_path / "streams")
    with streams.scoped():
        streams.use_declarations(tmp_path / "streams")
        yield reefer.STREAM


def _records() -> list[Any]:
    generated = reefer.generate(devices=6, events=220, seed=8)
    anonymizer = Anonymizer(Tokenizer(b"0123456789abcdef-fleet"))
    return [anonymizer.message(t, json.dumps(p).encode()) for t, p in generated.messages]


def test_the_service_serves_every_registered_stream_and_names_the_known_ones(
    declared: str,
) -> None:
    assert RetrainSettings().served() == ("telemetry", "payments", declared)
    assert RetrainSettings(streams=(declared,)).served() == (declared,)
    with pytest.raises(ConfigError, match=r"unknown stream 'reefr'.*reefer"):
        RetrainSettings(streams=("reefr",)).served()


def test_an_operator_asks_to_retrain_a_declared_stream_and_the_signer_trains_it(
    declared: str, tmp_path: Path
) -> None:
    dash = make_dashboard(tmp_path)
    try:
        with TestClient(create_app(dash)) as client:
            csrf = sign_in(client, "alice")
            assert f'id="retrain-{declared}"' in client.get("/runs").text
            asked = client.post(
                "/api/actions/retrain",
                json={"stream": declared, "reason": "new trailers"},
                headers={"X-CSRF-Token": csrf},
            )
            assert asked.status_code == 200, asked.text
            typo = client.post(
                "/api/actions/retrain", json={"stream": "reefr"}, headers={"X-CSRF-Token": csrf}
            )
            assert typo.status_code != 200 and "unknown stream 'reefr'" in typo.text
    finally:
        dash.actions.close()
        dash.store.close()

    key = signing.generate_private_key()
    with Registry(tmp_path / "registry") as reg:
        [pending] = reg.requests()
        assert (pending.kind, pending.stream, pending.state) == ("retrain", declared, "pending")
        source = MemorySource({declared: _records()}, [])
        settings = RetrainSettings(
            min_records=500, allow_unlabelled_promotion=True, seed_baselines=False, train=SMALL
        )
        trainer = TrainerService(reg, source, key, settings)
        [done] = SigningService(reg, trainer, None).handle_pending()
        assert done.state == "done", done.outcome
        champion = reg.champion(declared)
        assert champion is not None and done.result_version == champion.version
        decl = streams.get(declared).declaration
        assert decl is not None and champion.manifest["feature_spec"] == decl.feature_spec
        [run] = reg.runs(declared)
        assert run.decision == "promoted" and run.triggered_by == "alice"
        signing.verify_model_dir(champion.path, key.public_key())
