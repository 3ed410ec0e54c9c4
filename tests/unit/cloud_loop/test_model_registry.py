"""The model registry: registration, promotion, rollback, lineage and runs (real SQLite)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.registry import ModelRecord, Registry, RegistryError
from shared.contracts import ModelManifest, Scaling, encode
from shared.signing import generate_private_key, sign_model_dir, verify_model_dir


def model_dir(
    root: Path,
    version: str,
    stream: str = "payments",
    parent: str | None = None,
    content: bytes | None = None,
) -> Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(content or version.encode())
    m = ModelManifest(
        stream=stream,
        version=version,
        feature_spec="fs1",
        features=["a"],
        scaling=Scaling(mean=[0.0], scale=[1.0]),
        threshold=0.5,
        input_quant=(0.1, 0),
        output_quant=(0.1, 0),
        metrics={"holdout": {"roc_auc": 0.9, "pr_auc": 0.8, "alert_rate": 0.01}},
        data_range=(1.0, 2.0),
        parent=parent,
        created_ts=time.time(),
    )
    (d / "manifest.json").write_bytes(encode(m))
    sign_model_dir(d, KEY)
    return d


KEY = generate_private_key()


def champion(reg: Registry, stream: str) -> ModelRecord:
    record = reg.champion(stream)
    assert record is not None, f"no {stream} champion"
    return record


@pytest.fixture()
def reg(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path / "registry").start()
    yield r
    r.close()


def test_register_copies_signed_artifacts_and_is_idempotent(reg: Registry, tmp_path: Path) -> None:
    src = model_dir(tmp_path / "src", "v1")
    rec = reg.register(src)
    assert rec.state == "candidate" and rec.stream == "payments"
    assert rec.path.parent.parent == reg.artifacts and rec.path != src
    assert verify_model_dir(rec.path, KEY.public_key()).version == "v1"
    assert reg.register(src).version == "v1"  # same bytes: the existing record
    other = model_dir(tmp_path / "other", "v1", content=b"different")
    with pytest.raises(RegistryError, match="different model bytes"):
        reg.register(other)


def test_promote_keeps_one_champion_and_rollback_restores_the_previous(
    reg: Registry, tmp_path: Path
) -> None:
    for v, parent in (("v1", None), ("v2", "v1"), ("v3", "v2")):
        reg.register(model_dir(tmp_path / "src", v, parent=parent))
    reg.promote("v1", "alice")
    reg.promote("v2", "bob", "better PR AUC")
    assert champion(reg, "payments").version == "v2"
    assert reg.get("v1").state == "retired"
    reg.promote("v3", "carol")
    assert [m.version for m in reg.models("payments") if m.state == "champion"] == ["v3"]
    back = reg.rollback("payments", "dave", "alert storm")
    assert back.version == "v2" and reg.get("v3").state == "retired"
    assert champion(reg, "payments").version == "v2"
    assert reg.rollback("payments", "dave").version == "v1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback("payments", "dave")
    assert reg.rollback("payments", "erin", to="v3").version == "v3"
    acts = reg.actions("payments")
    assert (acts[0]["action"], acts[0]["version"], acts[0]["previous"], acts[0]["actor"]) == (
        "rollback",
        "v3",
        "v1",
        "erin",
    )
    assert [m.version for m in reg.lineage("v3")] == ["v3", "v2", "v1"]


def test_champions_are_per_stream(reg: Registry, tmp_path: Path) -> None:
    reg.register(model_dir(tmp_path / "src", "p1"), state="champion")
    reg.register(model_dir(tmp_path / "src", "t1", stream="telemetry"), state="champion")
    assert champion(reg, "payments").version == "p1"
    assert champion(reg, "telemetry").version == "t1"
    assert reg.streams() == ["payments", "telemetry"]
    with pytest.raises(RegistryError, match="not telemetry"):
        reg.rollback("telemetry", to="p1")


def test_runs_record_trigger_params_metrics_curves_and_decision(
    reg: Registry, tmp_path: Path
) -> None:
    reg.register(model_dir(tmp_path / "src", "v1"), state="champion")
    run_id = reg.start_run(
        "payments", "drift", "drift-monitor", "PSI 0.4 on amount_z", {"epochs": 3}
    )
    assert reg.run(run_id).status == "running" and reg.run(run_id).champion == "v1"
    reg.register(model_dir(tmp_path / "src", "v2", parent="v1"), run_id=run_id)
    run = reg.finish_run(
        run_id,
        decision="promoted",
        decision_reason="PR AUC +0.05",
        challenger="v2",
        metrics={"challenger": {"pr_auc": 0.85}},
        curves={"challenger": {"roc": [[0, 0], [1, 1]]}, "loss": [0.5, 0.3]},
        data_range=(10.0, 20.0),
        records=5000,
    )
    assert (run.status, run.decision, run.trigger, run.triggered_by) == (
        "finished",
        "promoted",
        "drift",
        "drift-monitor",
    )
    assert run.params == {"epochs": 3} and run.curves["loss"] == [0.5, 0.3]
    assert (run.data_from, run.data_to, run.records) == (10.0, 20.0, 5000)
    assert run.duration_s is not None and run.duration_s >= 0
    assert reg.get("v2").run_id == run_id
    assert [r.id for r in reg.runs("payments")] == [run_id]


def test_registry_survives_reopening(tmp_path: Path) -> None:
    with Registry(tmp_path / "r") as reg:
        reg.register(model_dir(tmp_path / "src", "v1"), state="champion")
    with Registry(tmp_path / "r") as reg:
        assert champion(reg, "payments").version == "v1"
