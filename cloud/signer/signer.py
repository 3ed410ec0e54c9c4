"""The signer: the one cloud process that holds the model-signing key.

It trains (the trainer service: on a schedule, on drift, and retrains operators ask for),
signs every model it trains and every release it publishes, and carries out what operators
asked for on the dashboard. The dashboard holds no key: it records each request (promote
version X, roll back a stream, approve or reject a challenger awaiting approval, retrain a
stream) in the registry's ``requests`` table with who asked and their role. The signer picks
requests up oldest first and checks each before acting on it: the asker had the operator role
when it was recorded, the model or run exists, the stream is one it serves, a run to approve
or reject is still awaiting approval. It records the outcome (done, refused, failed, and why)
in the same row, which the dashboard shows.

Two loops share the work: one carries out promotions, rollbacks, approvals and rejections
within a second or so; the other trains (one run at a time: retrains asked for, then the
trainer service's own cycle) and renews releases before they expire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cloud.registry import ModelRecord, Registry, RunRecord
from cloud.registry.registry import RequestKind, RequestRecord, RequestState
from cloud.trainer_service.trainer_service import Publishes, TrainerService, renew_releases
from shared.errors import FleetsentryError
from shared.streams import all_streams

log = logging.getLogger("signer")

QUICK: tuple[RequestKind, ...] = ("promote", "rollback", "approve", "reject")
TRAINING: tuple[RequestKind, ...] = ("retrain",)
TrainerFactory = Callable[[Registry], TrainerService]
# How often serve() looks at its caller's ``stop`` while the loops run.
STOP_POLL_S = 0.2


class Refused(Exception):
    """A request the signer will not carry out, and why (recorded as ``refused``)."""


class Failed(Exception):
    """A request carried out in part, or not at all (recorded as ``failed``)."""


@dataclass
class SigningService:
    """Carries out recorded requests against one registry connection (one per thread)."""

    registry: Registry
    trainer: TrainerService | None
    publisher: Publishes | None
    # The streams it serves (None: every registered stream, declared ones too).
    streams: tuple[str, ...] | None = None
    # An approved champion serves this long before drift may retrain it (as after an
    # automatic promotion).
    settle_s: float = 1800.0

    def handle_pending(
        self, kinds: tuple[RequestKind, ...] = QUICK + TRAINING
    ) -> list[RequestRecord]:
        """Carry out every pending request of ``kinds``, oldest first."""
        done = []
        while (req := self.registry.claim_request(kinds)) is not None:
            done.append(self.handle(req))
        return done

    def handle(self, req: RequestRecord) -> RequestRecord:
        state: RequestState = "done"
        version: str | None = None
        try:
            if req.role != "operator":
                raise Refused(
                    f"{req.actor} was {req.role or 'no dashboard user'} when asking, "
                    f"and only operators may {req.kind}"
                )
            version, outcome = _HANDLERS[req.kind](self, req)
        except Refused as exc:
            state, outcome = "refused", str(exc)
        except Failed as exc:
            state, outcome = "failed", str(exc)
        except FleetsentryError as exc:  # the registry's own checks (no earlier champion...)
            state, outcome = "refused", str(exc)
        except Exception as exc:  # recorded; the signer carries on with the next request
            log.exception("request %d (%s) failed", req.id, req.kind)
            state, outcome = "failed", f"{type(exc).__name__}: {exc}"
        log.info("request %d: %s by %s: %s (%s)", req.id, req.kind, req.actor, state, outcome)
        return self.registry.finish_request(req.id, state, outcome, version)

    def _known(self, stream: str) -> str:
        served = self.streams or tuple(spec.name for spec in all_streams())
        if stream not in served:
            raise Refused(f"unknown stream {stream!r} (this signer serves {', '.join(served)})")
        return stream

    def _promote(self, req: RequestRecord) -> tuple[str, str]:
        model = self.registry.find(req.version or "")
        if model is None:
            raise Refused(f"no model version {req.version!r} in the registry")
        self._known(model.stream)
        m = self.registry.promote(model.version, req.actor, req.reason)
        return m.version, self._published(m, f"{m.version} is now the champion of {m.stream}")

    def _rollback(self, req: RequestRecord) -> tuple[str, str]:
        stream = self._known(req.stream)
        m = self.registry.rollback(stream, req.actor, req.reason, to=req.version or None)
        return m.version, self._published(m, f"{stream} rolled back to {m.version}")

    def _waiting(self, req: RequestRecord) -> tuple[RunRecord, ModelRecord]:
        try:
            run = self.registry.run(req.run_id or 0)
        except FleetsentryError:
            raise Refused(f"no training run {req.run_id} in the registry") from None
        if run.decision != "awaiting approval":
            raise Refused(f"run {run.id} is {run.decision or run.status}, not awaiting approval")
        self._known(run.stream)
        model = self.registry.find(run.challenger or "")
        if model is None:
            raise Refused(f"run {run.id}'s challenger {run.challenger!r} is not in the registry")
        return run, model

    def _approve(self, req: RequestRecord) -> tuple[str, str]:
        run, model = self._waiting(req)
        said = f"approved by {req.actor}" + (f": {req.reason}" if req.reason else "")
        self.registry.decide_run(run.id, "promoted", f"{run.decision_reason}; {said}")
        m = self.registry.promote(model.version, req.actor, f"run {run.id} {said}")
        self.registry.set_status(
            run.stream,
            "watching",
            f"run {run.id}: {m.version} {said}",
            next_ts=time.time() + self.settle_s,
            failures=0,
        )
        return m.version, self._published(
            m, f"run {run.id} approved: {m.version} is now the champion of {m.stream}"
        )

    def _reject(self, req: RequestRecord) -> tuple[str, str]:
        run, model = self._waiting(req)
        said = f"rejected by {req.actor}" + (f": {req.reason}" if req.reason else "")
        self.registry.decide_run(run.id, "rejected", f"{run.decision_reason}; {said}")
        self.registry.set_status(
            run.stream,
            "watching",
            f"run {run.id}: {model.version} {said}; automatic runs resume",
            next_ts=None,
            failures=0,
        )
        return model.version, (
            f"run {run.id} rejected: {model.version} stays a candidate and is not published"
        )

    def _retrain(self, req: RequestRecord) -> tuple[str | None, str]:
        if self.trainer is None:
            raise Refused("this signer runs no trainer")
        stream = self._known(req.stream)
        run = self.trainer.retrain(stream, "manual", req.actor, req.reason)
        outcome = f"run {run.id}: {run.decision} ({run.decision_reason})"
        if run.decision == "awaiting approval":
            self.trainer.note_awaiting(run)
        if run.decision == "failed":
            raise Failed(outcome + (f" {run.error}" if run.error else ""))
        return run.challenger, outcome

    def _published(self, model: ModelRecord, done: str) -> str:
        if self.publisher is None:
            return f"{done} (not published: publishing is off)"
        try:
            self.publisher.publish(model)
        except FleetsentryError as exc:
            raise Failed(
                f"{done}, but publishing failed: {exc} (the signer publishes the "
                f"champion again when it renews releases)"
            ) from None
        return f"{done}; signed and published to the gateways"


_HANDLERS: dict[str, Callable[[SigningService, RequestRecord], tuple[str | None, str]]] = {
    "promote": SigningService._promote,
    "rollback": SigningService._rollback,
    "approve": SigningService._approve,
    "reject": SigningService._reject,
    "retrain": SigningService._retrain,
}


class SignerStopped(FleetsentryError):
    """One of the signer's loops ended because of an error; the other was stopped with it."""


def serve(
    registry_root: Path,
    make_trainer: TrainerFactory,
    publisher: Publishes | None,
    stop: threading.Event,
    *,
    schedule: bool = True,
    streams: tuple[str, ...] | None = None,
    poll_s: float = 1.0,
    train_poll_s: float = 5.0,
) -> None:
    """Both loops, until ``stop`` is set.

    The loops stand or fall together: when one ends because of an error (at its start, as
    when the registry cannot be opened or the trainer cannot be made, or later), it is
    logged, the other loop is stopped (once its current pass is done) and
    :class:`SignerStopped` is raised naming the loop and the cause, so that the process
    exits non-zero and its supervisor restarts it.
    """
    halt = threading.Event()  # set once ``stop`` is set or a loop has ended
    failures: list[tuple[str, BaseException]] = []

    def run(
        name: str,
        kinds: tuple[RequestKind, ...],
        schedule: bool | None,
        wait: float,
    ) -> None:
        try:
            _loop(registry_root, make_trainer, publisher, halt, kinds, schedule, streams, wait)
        except BaseException as exc:
            failures.append((name, exc))
            log.critical("%s loop ended: %s", name, _describe(exc), exc_info=exc)
        finally:
            halt.set()

    loops = [
        threading.Thread(
            target=run,
            name=name,
            daemon=True,
            args=(name, kinds, schedule if training else None, wait),
        )
        for name, kinds, training, wait in (
            ("signer-requests", QUICK, False, poll_s),
            ("signer-training", TRAINING, True, train_poll_s),
        )
    ]
    for t in loops:
        t.start()
    while not halt.wait(STOP_POLL_S):
        if stop.is_set():
            halt.set()
    _end(loops, failures)


def _end(loops: list[threading.Thread], failures: list[tuple[str, BaseException]]) -> None:
    """Join the loops once one has ended; raise SignerStopped when one ended on an error."""
    for t in loops:
        if failures and t.name not in (name for name, _exc in failures):
            log.critical("stopping the signer: %s ends after its current pass", t.name)
        t.join()
    if failures:
        name, exc = failures[0]
        also = "".join(f"; {n} ended too: {_describe(e)}" for n, e in failures[1:])
        raise SignerStopped(
            f"the signer stopped: its {name} loop ended with {_describe(exc)}{also}"
        ) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _loop(
    registry_root: Path,
    make_trainer: TrainerFactory,
    publisher: Publishes | None,
    stop: threading.Event,
    kinds: tuple[RequestKind, ...],
    schedule: bool | None,
    streams: tuple[str, ...] | None,
    poll_s: float,
) -> None:
    """Carry out ``kinds`` of requests; the training loop (``schedule`` not None) also runs
    the trainer service's cycle (when ``schedule``) and renews releases."""
    with Registry(registry_root) as reg:
        trainer = make_trainer(reg)
        signer = SigningService(reg, trainer, publisher, streams, trainer.settings.settle_s)
        while not stop.is_set():
            try:
                signer.handle_pending(kinds)
                if schedule:
                    trainer.cycle()
                if schedule is not None:
                    renew_releases(publisher, reg)
            except FleetsentryError as exc:  # a broker down, bad data: say so, keep serving
                log.error("signer loop: %s", exc)
            except Exception:  # the loop outlives any one pass; say what broke it
                log.exception("signer loop failed")
            stop.wait(poll_s)
