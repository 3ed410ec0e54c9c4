"""What signed-in users can do: retrain now, promote, roll back. Each is recorded with who.

Promotions and rollbacks change the registry (which records the actor and reason in its
``actions`` table) and then publish the new champion to the ``models`` topic, as the
registry's CLI does. A retrain runs the trainer service's own ``retrain`` in a background
thread; training runs one at a time, scheduled ones included, so two never share the cores.
A stream has at most one retrain queued or running: asking again meanwhile is refused, so
requests cannot pile up threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.dashboard.errors import DashboardError
from cloud.registry import ModelRecord, Registry
from shared.errors import FleetsentryError

if TYPE_CHECKING:
    from cloud.publisher import Publisher
    from cloud.retrain.service import TrainerService

log = logging.getLogger("dashboard.actions")

TrainerFactory = Callable[[Registry], "TrainerService"]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    version: str | None = None


class Actions:
    """Constructing it does no I/O; ``start()`` opens the publisher, ``close()`` stops all."""

    def __init__(self, registry_root: Path, trainer: TrainerFactory | None = None,
                 publisher: Publisher | None = None) -> None:
        self.registry_root = registry_root
        self.trainer = trainer
        self.publisher = publisher
        self.pending: list[dict[str, Any]] = []
        self._active: dict[str, dict[str, Any]] = {}  # stream -> its queued or running job
        self._train_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._local = threading.local()
        self._opened: list[Registry] = []
        self._threads: list[threading.Thread] = []

    def registry(self) -> Registry:
        """This thread's registry connection (SQLite connections are not shared by threads)."""
        reg = getattr(self._local, "registry", None)
        if reg is None:
            reg = self._local.registry = Registry(self.registry_root).start()
            self._opened.append(reg)
        return reg

    def start(self) -> Actions:
        if self.publisher is not None:
            self.publisher.start()
        return self

    def close(self) -> None:
        for t in self._threads:
            t.join(timeout=1)
        if self.publisher is not None:
            self.publisher.close()
        for reg in self._opened:
            reg.close()

    @property
    def can_retrain(self) -> bool:
        return self.trainer is not None

    # --- promote / roll back -----------------------------------------------------------------

    def promote(self, version: str, actor: str, reason: str) -> Outcome:
        try:
            m = self.registry().promote(version, actor, reason)
        except FleetsentryError as exc:
            return Outcome(False, str(exc))
        return self._published(m, f"{m.version} is now the champion of {m.stream}")

    def rollback(self, stream: str, actor: str, reason: str, to: str | None = None) -> Outcome:
        try:
            m = self.registry().rollback(stream, actor, reason, to=to or None)
        except FleetsentryError as exc:
            return Outcome(False, str(exc))
        return self._published(m, f"{stream} rolled back to {m.version}")

    def _published(self, m: ModelRecord, done: str) -> Outcome:
        if self.publisher is None:
            return Outcome(True, f"{done} (not published: publishing is off)", m.version)
        try:
            self.publisher.publish(m)
        except FleetsentryError as exc:
            return Outcome(True, f"{done}, but publishing failed: {exc}", m.version)
        return Outcome(True, f"{done}; published to the gateways", m.version)

    # --- retrain -----------------------------------------------------------------------------

    def retrain(self, stream: str, actor: str, reason: str) -> Outcome:
        if self.trainer is None:
            raise DashboardError("no trainer in this process: start the dashboard with "
                                 "`fleetsentry cloud run` to retrain from it")
        job = {"stream": stream, "actor": actor, "reason": reason, "queued_ts": time.time()}
        with self._pending_lock:
            busy = self._active.get(stream)
            if busy is not None:
                state = "queued" if busy in self.pending else "running"
                return Outcome(False, f"a retrain of {stream} is already {state} (asked for by "
                                      f"{busy['actor']}); wait for it to finish under Training "
                                      f"runs")
            self._active[stream] = job
            self.pending.append(job)
        t = threading.Thread(target=self._retrain, args=(job,), name=f"retrain-{stream}",
                             daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return Outcome(True, f"retrain of {stream} requested by {actor}; it appears under "
                             f"Training runs when it starts")

    def _retrain(self, job: dict[str, Any]) -> None:
        try:
            with self._train_lock:
                with self._pending_lock:
                    self.pending.remove(job)
                self._train(job)
        finally:
            with self._pending_lock:
                self._active.pop(job["stream"], None)

    def _train(self, job: dict[str, Any]) -> None:
        assert self.trainer is not None
        reg = Registry(self.registry_root).start()
        try:
            svc = self.trainer(reg)
            run = svc.retrain(job["stream"], "manual", job["actor"], job["reason"])
            log.info("run %d (%s, by %s): %s", run.id, run.stream, job["actor"], run.decision)
            if svc.publisher is None and run.decision == "promoted" and self.publisher:
                champ = reg.champion(run.stream)
                if champ is not None:
                    self.publisher.publish(champ)
        except Exception:  # recorded by the service as a failed run; keep serving
            log.exception("retrain of %s failed", job["stream"])
        finally:
            reg.close()

    def schedule(self, stop: threading.Event, poll_s: float = 5.0) -> None:
        """The trainer service's own loop (schedule and drift), sharing the training lock."""
        if self.trainer is None:
            return
        reg = Registry(self.registry_root).start()
        try:
            svc = self.trainer(reg)
            while not stop.is_set():
                with self._train_lock:
                    try:
                        svc.cycle()
                    except FleetsentryError as exc:
                        log.error("trainer cycle failed: %s", exc)
                    except Exception:  # the loop outlives any one cycle; say what broke it
                        log.exception("trainer cycle failed")
                stop.wait(poll_s)
        finally:
            reg.close()
