"""The demo's view of the loop, fed the model-status records a gateway's agent writes."""

from __future__ import annotations

from shared.contracts import ModelStatus
from shared.demo_loop import LoopWatcher, shipped_version


def _st(edge: str, version: str, state: str, ts: float) -> ModelStatus:
    return ModelStatus(
        edge_id=edge,
        stream="telemetry",
        version=version,
        state=state,  # type: ignore[arg-type]
        reason="",
        ts=ts,
    )


def test_each_gateway_reports_the_model_it_serves_after_switches_and_rollbacks() -> None:
    w = LoopWatcher("http://127.0.0.1:1/", "u", "p", "127.0.0.1:1", ["edge-1", "edge-2"])
    lines = w._agent_lines(
        [
            _st("edge-1", "m1", "shadowing", 1),
            _st("edge-1", "m1", "active", 2),
            _st("edge-2", "m1", "active", 3),
            _st("edge-1", "m2", "active", 4),
            _st("edge-1", "m2", "rolled_back", 5),
            _st("edge-1", "m1", "active", 2),
        ]
    )  # seen before: no new line
    assert len(lines) == 5 and lines[-1].endswith("edge-1 agent, telemetry: m2 rolled_back")
    assert w.model_of("edge-1", "telemetry") == "m1"
    assert w.model_of("edge-2", "telemetry") == "m1"
    assert (
        w.model_of("edge-2", "payments") == f"{shipped_version('payments')} (the shipped baseline)"
    )
    assert shipped_version("payments").startswith("payments-")


def _run(run_id: int, trigger: str, decision: str | None, challenger: str = "") -> dict:
    return {
        "id": run_id,
        "stream": "telemetry",
        "trigger": trigger,
        "triggered_by": "t",
        "trigger_reason": "edge-2: alert rate",
        "champion": "base",
        "decision": decision,
        "decision_reason": "",
        "challenger": challenger,
        "records": 1,
        "duration_s": 1.0,
    }


def test_the_loop_stays_open_while_drift_awaits_labels_or_a_retry() -> None:
    w = LoopWatcher("http://127.0.0.1:1/", "u", "p", "127.0.0.1:1", ["edge-1", "edge-2"])
    w._trainer_lines(
        [
            {
                "stream": "telemetry",
                "state": "waiting for labels",
                "detail": "1 labelled episode(s) in the holdout; to retrain on drift: "
                "edge-2: alert rate 1.5%",
            }
        ]
    )
    assert w.busy(), "drift seen, labels awaited: the loop is open"
    w._trainer_lines(
        [{"stream": "telemetry", "state": "watching", "detail": "drift: edge-2: alert rate 5.67%"}]
    )
    assert w.busy(), "drift seen, the run being prepared: the loop is open"
    w._trainer_lines(
        [
            {
                "stream": "payments",
                "state": "waiting for labels",
                "detail": "0 of 10 records labelled; to retrain on schedule: ...",
            }
        ]
    )
    w._trainer_lines([{"stream": "telemetry", "state": "watching", "detail": "no drift"}])
    assert not w.busy(), "waiting for labels without drift is not the demo's loop"
    w._run_lines([_run(1, "drift", None)])
    assert w.busy()  # training
    for decision in ("kept", "failed"):
        w._runs[1] = _run(1, "drift", decision, "c1")
        w._trainer_lines(
            [{"stream": "telemetry", "state": "backing off", "detail": "retry in 30 s"}]
        )
        assert w.busy(), f"a {decision} drift run the trainer retries leaves the loop open"
        w._trainer_lines([{"stream": "telemetry", "state": "watching", "detail": "-"}])
    w._trainer_lines([{"stream": "telemetry", "state": "watching", "detail": "no drift"}])
    assert not w.busy(), "no retry coming: nothing to wait for"
    w._trainer_lines([{"stream": "telemetry", "state": "backing off", "detail": "retry in 30 s"}])
    w._run_lines([_run(2, "drift", "promoted", "c2")])
    assert w.busy()  # promoted, not yet active on the gateways
    w._agent_lines([_st("edge-1", "c2", "active", 1), _st("edge-2", "c2", "active", 2)])
    assert not w.busy()
    w._runs[3] = _run(3, "scheduled", "kept", "c3")
    assert not w.busy(), "only drift runs are retried for the demo's loop"
