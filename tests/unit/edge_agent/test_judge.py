"""The agent's acceptance and rollback rules, and the models-directory switch: pure logic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.agent.judge import Limits, Watch, WatchLimits, check_watch, judge
from edge.agent.store import ModelStore, safe_name
from shared import model_bundle

LIMITS = Limits(max_rate_ratio=2.0, max_rate_increase=0.01)


def _scores(n: int, alerts: int) -> np.ndarray:
    s = np.full(n, 0.1)
    s[:alerts] = 5.0
    return s


def test_accepts_a_model_that_alerts_no_more_than_allowed() -> None:
    v = judge(_scores(1000, 25), 1.0, _scores(1000, 20), 1.0, LIMITS)
    assert v.accept and v.candidate_rate == 0.025 and v.running_rate == 0.02
    # fewer alerts is fine: the cloud promoted it on labels the edge does not have
    assert judge(_scores(1000, 0), 1.0, _scores(1000, 50), 1.0, LIMITS).accept


def test_refuses_an_alert_flood_and_non_finite_scores() -> None:
    v = judge(_scores(1000, 100), 1.0, _scores(1000, 20), 1.0, LIMITS)
    assert not v.accept and "10.00% against 2.00% now (limit 4.00%)" in v.reason
    # with a near-zero running rate the absolute margin applies
    assert judge(_scores(1000, 9), 1.0, _scores(1000, 0), 1.0, LIMITS).accept
    assert not judge(_scores(1000, 11), 1.0, _scores(1000, 0), 1.0, LIMITS).accept
    bad = _scores(100, 0)
    bad[3] = np.nan
    v = judge(bad, 1.0, _scores(100, 0), 1.0, LIMITS)
    assert not v.accept and "NaN" in v.reason


def test_no_window_or_no_running_model() -> None:
    assert judge(np.zeros(0), 1.0, None, None, LIMITS).accept
    v = judge(_scores(100, 5), 1.0, None, None, LIMITS)
    assert v.accept and "no running model" in v.reason


WL = WatchLimits(LIMITS, min_events=100, activation_timeout_s=30, watch_s=600, done_events=1000)


def test_watch_rolls_back_on_a_live_alert_jump_only_after_enough_events() -> None:
    w = Watch("payments", "v2", started=0.0, expected_rate=0.02)
    for _i in range(99):
        w.observe("v2", True)
    assert check_watch(w, 10.0, WL) is None  # too few events to judge
    w.observe("v2", True)
    verdict = check_watch(w, 10.0, WL)
    assert verdict is not None
    action, why = verdict
    assert action == "rollback" and "live alert rate 100.00% over 100 events" in why


def test_watch_passes_a_healthy_model_and_ends() -> None:
    w = Watch("payments", "v2", started=0.0, expected_rate=0.02)
    for i in range(1000):
        w.observe("v2", i % 50 == 0)
    assert check_watch(w, 10.0, WL) == ("done", "live alert rate 2.00% over 1000 events")


def test_watch_rolls_back_when_the_scorer_never_switches() -> None:
    w = Watch("payments", "v2", started=0.0, expected_rate=0.02)
    w.observe("v1", False)
    assert check_watch(w, 5.0, WL) is None  # in-flight batches of the old model are normal
    verdict = check_watch(w, 31.0, WL)
    assert verdict is not None
    action, why = verdict
    assert action == "rollback" and "could not load v2" in why
    idle = Watch("payments", "v2", started=0.0, expected_rate=0.02)
    assert check_watch(idle, 31.0, WL) is None  # no traffic at all: nothing to conclude


def _model(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(name.encode())
    return d


def test_store_switches_atomically_keeps_previous_and_goes_back(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").start()
    assert store.active_dir("payments") is None  # the shipped baseline
    v1 = store.install(_model(tmp_path / "in", "a"), "payments", "v1")
    assert store.activate("payments", v1, "v1") is None
    assert (store.link("payments") / "model.tflite").read_bytes() == b"a"
    v2 = store.install(_model(tmp_path / "in", "b"), "payments", "v2")
    assert store.activate("payments", v2, "v2") == v1.resolve()
    assert store.link("payments").is_symlink() and store.active_version("payments") == "v2"
    assert store.previous("payments") == ("v1", v1.resolve())
    # a restart reads the same state back
    again = ModelStore(tmp_path / "models").start()
    assert again.active_version("payments") == "v2" and again.previous("payments")[0] == "v1"
    again.activate("payments", None, None)
    assert again.active_dir("payments") is None and not again.link("payments").exists()


def test_store_adopts_a_plain_directory_and_prunes_old_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models").start()
    _model(tmp_path / "models", "payments")  # an operator copied a model in by hand
    installed = [
        store.install(_model(tmp_path / "in", f"m{i}"), "payments", f"v{i}") for i in range(5)
    ]
    store.activate("payments", installed[0], "v0")
    assert store.previous("payments")[1] is not None  # the adopted directory is kept
    store.activate("payments", installed[4], "v4")
    removed = store.prune("payments", keep=2)
    assert installed[0].resolve() not in {p.resolve() for p in removed}  # previous is kept
    assert installed[4].exists() and len(removed) >= 2


def test_version_names_cannot_escape_the_models_directory() -> None:
    assert safe_name("../../etc/passwd") == "_.._etc_passwd"
    assert "/" not in safe_name("a/b") and not safe_name(".hidden").startswith(".")


def test_bundle_refuses_unknown_files_and_oversize_models(tmp_path: Path) -> None:
    import msgspec

    bad = msgspec.json.encode(
        {"schema": 1, "stream": "payments", "version": "v", "files": {"evil.sh": b"x"}}
    )
    with pytest.raises(model_bundle.BundleError, match="unexpected files"):
        model_bundle.unpack(bad)
    with pytest.raises(model_bundle.BundleError, match="not a model message"):
        model_bundle.unpack(b"{not json")
    d = tmp_path / "big"
    d.mkdir()
    for name in model_bundle.SIGNED_FILES:
        (d / name).write_bytes(b"x")
    (d / "model.tflite").write_bytes(b"\0" * (model_bundle.max_model_bytes() + 1))
    with pytest.raises(model_bundle.BundleError, match="exceed"):
        model_bundle.pack(d, "payments", "v")
    (d / "model.tflite").write_bytes(b"\0" * (model_bundle.max_model_bytes() - 10))
    assert len(model_bundle.pack(d, "payments", "v")) <= model_bundle.MODEL_MESSAGE_BYTES
