"""Payment decisions sent back to the vehicle on ``fleet/{vin}/commands``."""

from __future__ import annotations

from collections.abc import Sequence

from shared.contracts import Contribution, Decision


def decide(
    event_id: str,
    ts: float,
    score: float,
    threshold: float,
    model_version: str,
    top: Sequence[Contribution] = (),
) -> Decision:
    """Decline a payment scored above its threshold, approve the rest.

    >>> decide("p1", 10.0, 2.5, 1.0, "v1").decision
    'decline'
    >>> decide("p2", 10.0, 0.5, 1.0, "v1").decision
    'approve'
    """
    if score > threshold:
        why = ", ".join(c.feature for c in top)
        reason = f"anomaly score {score:.3g} above threshold {threshold:.3g}"
        if why:
            reason += f"; unusual: {why}"
        return Decision(
            event_id=event_id,
            decision="decline",
            reason=reason,
            score=score,
            threshold=threshold,
            model_version=model_version,
            ts=ts,
        )
    return Decision(
        event_id=event_id,
        decision="approve",
        reason="within usual behaviour",
        score=score,
        threshold=threshold,
        model_version=model_version,
        ts=ts,
    )


def commands_topic(vin: str) -> str:
    return f"fleet/{vin}/commands"
