"""The demo's view of the loop, fed the model-status records a gateway's agent writes."""

from __future__ import annotations

from shared.contracts import ModelStatus
from shared.demo_loop import LoopWatcher, shipped_version


def _st(edge: str, version: str, state: str, ts: float) -> ModelStatus:
    return ModelStatus(edge_id=edge, stream="telemetry", version=version, state=state,  # type: ignore[arg-type]
                       reason="", ts=ts)


def test_each_gateway_reports_the_model_it_serves_after_switches_and_rollbacks() -> None:
    w = LoopWatcher("http://127.0.0.1:1/", "u", "p", "127.0.0.1:1", ["edge-1", "edge-2"])
    lines = w._agent_lines([_st("edge-1", "m1", "shadowing", 1), _st("edge-1", "m1", "active", 2),
                            _st("edge-2", "m1", "active", 3), _st("edge-1", "m2", "active", 4),
                            _st("edge-1", "m2", "rolled_back", 5),
                            _st("edge-1", "m1", "active", 2)])  # seen before: no new line
    assert len(lines) == 5 and lines[-1].endswith("edge-1 agent, telemetry: m2 rolled_back")
    assert w.model_of("edge-1", "telemetry") == "m1"
    assert w.model_of("edge-2", "telemetry") == "m1"
    assert w.model_of("edge-2", "payments") == f"{shipped_version('payments')} (the shipped baseline)"
    assert shipped_version("payments").startswith("payments-")
