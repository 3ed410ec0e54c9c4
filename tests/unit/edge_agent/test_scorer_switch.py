"""The scorer takes the model the agent switched to between batches (real int8 models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.agent.store import ModelStore
from edge.config import EdgeConfig, ScorerSettings
from edge.scorer.model_runner import ModelHolder, load_model
from edge.scorer.scorer import ScorerService
from tests.agent_models import ModelKit


@pytest.fixture(scope="module")
def kit() -> ModelKit:
    return ModelKit.shared()


def test_scorer_switches_on_the_symlink_and_back(kit: ModelKit, tmp_path: Path) -> None:
    models = tmp_path / "models"
    config = EdgeConfig(
        data_dir=tmp_path, scorer=ScorerSettings(models_dir=models, public_key=kit.public_key)
    )
    first = kit.variant("switch-a")
    svc = ScorerService(
        config, holders={"payments": ModelHolder(load_model(first, "payments", kit.public_key))}
    )
    svc._loaded = {"payments": svc._active_dir("payments")}  # as start() records it
    assert svc.reload_models(every_s=0) == []  # nothing switched yet
    store = ModelStore(models).start()
    second = store.install(kit.variant("switch-b", threshold=0.123), "payments", "switch-b")
    store.activate("payments", second, "switch-b")
    assert svc.reload_models(every_s=0) == ["payments"]
    assert svc.holders is not None
    holder = svc.holders["payments"]
    assert holder.current.version == "switch-b" and holder.current.threshold == 0.123
    x = kit.data.normal(64, seed=5)
    assert np.isfinite(holder.current.scorer.score_batch(x)[0]).all()
    assert svc.reload_models(every_s=0) == []  # same target: no reload
    # A model that fails to load (tampered on disk) is not taken; the running one stays.
    third = store.install(kit.variant("switch-c"), "payments", "switch-c")
    (third / "model.tflite").write_bytes(b"tampered")
    store.activate("payments", third, "switch-c")
    assert svc.reload_models(every_s=0) == []
    assert holder.current.version == "switch-b"
    assert svc.reload_models(every_s=0) == []  # a failed target is not retried every batch
    store.activate("payments", second, "switch-b")  # the agent's rollback
    svc.reload_models(every_s=0)
    assert holder.current.version == "switch-b"
