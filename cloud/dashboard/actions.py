"""What signed-in operators can ask for: retrain now, promote, roll back, approve or reject a
challenger awaiting approval. Each is recorded with who asked and their role.

The dashboard holds no signing key and changes no champion itself: it records each request in
the registry's ``requests`` table, and the signer (``fleetsentry cloud signer``, started by
``cloud run``) checks it, carries it out (signing and publishing what it promotes) and records
the outcome there. Requests naming no model or run are refused at once, and a stream has at
most one retrain open, so requests cannot pile up.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.dashboard.errors import DashboardError
from cloud.registry import Registry
from cloud.registry.registry import OPEN_REQUESTS, RequestKind, RequestRecord
from shared.errors import FleetsentryError

OPERATOR = "operator"
CARRIED_OUT = "the signer carries it out; its outcome shows under Requests on Training runs"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    version: str | None = None


class Actions:
    """Constructing it does no I/O; ``start()`` is there for symmetry, ``close()`` closes the
    registry connections it opened (one per thread)."""

    def __init__(self, registry_root: Path) -> None:
        self.registry_root = registry_root
        self._local = threading.local()
        self._opened: list[Registry] = []

    def registry(self) -> Registry:
        """This thread's registry connection (SQLite connections are not shared by threads)."""
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = Registry(self.registry_root).start()
            self._opened.append(reg)
        return reg

    def start(self) -> Actions:
        return self

    def close(self) -> None:
        for reg in self._opened:
            reg.close()
        self._opened.clear()

    def __enter__(self) -> Actions:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def can_retrain(self) -> bool:
        return True  # the signer trains; the dashboard only asks

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Requests not yet carried out, oldest first, for the runs page."""
        return [_row(r) for r in reversed(self.registry().requests(OPEN_REQUESTS))]

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest requests, whatever became of them, newest first."""
        return [_row(r) for r in self.registry().requests(limit=limit)]

    # --- requests ----------------------------------------------------------------------------

    def promote(self, version: str, actor: str, role: str, reason: str) -> Outcome:
        model = self.registry().find(version)
        if model is None:
            return Outcome(False, f"no model version {version!r} in the registry")
        return self._ask(
            "promote",
            actor,
            role,
            reason,
            f"promotion of {version} requested",
            stream=model.stream,
            version=version,
        )

    def rollback(
        self, stream: str, actor: str, role: str, reason: str, to: str | None = None
    ) -> Outcome:
        if to and self.registry().find(to) is None:
            return Outcome(False, f"no model version {to!r} in the registry")
        return self._ask(
            "rollback",
            actor,
            role,
            reason,
            f"rollback of {stream} requested",
            stream=stream,
            version=to or None,
        )

    def retrain(self, stream: str, actor: str, role: str, reason: str) -> Outcome:
        return self._ask(
            "retrain",
            actor,
            role,
            reason,
            f"retrain of {stream} requested by "
            f"{actor}; it appears under Training runs when it starts",
            stream=stream,
        )

    def approve(self, run_id: int, actor: str, role: str, reason: str) -> Outcome:
        return self._decide("approve", run_id, actor, role, reason)

    def reject(self, run_id: int, actor: str, role: str, reason: str) -> Outcome:
        return self._decide("reject", run_id, actor, role, reason)

    def _decide(
        self, kind: RequestKind, run_id: int, actor: str, role: str, reason: str
    ) -> Outcome:
        try:
            run = self.registry().run(run_id)
        except FleetsentryError as exc:
            return Outcome(False, str(exc))
        if run.decision != "awaiting approval":
            return Outcome(
                False, f"run {run_id} is {run.decision or run.status}, not awaiting approval"
            )
        return self._ask(
            kind,
            actor,
            role,
            reason,
            f"{kind} of run {run_id} ({run.challenger}) requested",
            stream=run.stream,
            version=run.challenger,
            run_id=run_id,
        )

    def _ask(
        self,
        kind: RequestKind,
        actor: str,
        role: str,
        reason: str,
        said: str,
        *,
        stream: str,
        version: str | None = None,
        run_id: int | None = None,
    ) -> Outcome:
        if role != OPERATOR:  # the app refuses viewers first; this is the last word
            raise DashboardError(f"{actor} is a {role}: only operators may {kind}")
        try:
            self.registry().add_request(
                kind, actor, role, stream=stream, version=version, run_id=run_id, reason=reason
            )
        except FleetsentryError as exc:
            return Outcome(False, str(exc))
        return Outcome(True, f"{said}; {CARRIED_OUT}", version)


def _row(r: RequestRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "ts": r.ts,
        "kind": r.kind,
        "stream": r.stream,
        "version": r.version,
        "run_id": r.run_id,
        "actor": r.actor,
        "reason": r.reason,
        "state": r.state,
        "outcome": r.outcome,
        "result_version": r.result_version,
        "finished_ts": r.finished_ts,
    }
