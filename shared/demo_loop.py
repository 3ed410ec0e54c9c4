"""The demo's view of the closed loop, from outside the cloud and the gateways.

It reads what an operator could: the cloud dashboard's JSON API (training runs and what the
trainer service is doing about each stream) and the cloud's copies of every gateway's
``model-status`` (what each gateway's agent did with a model). ``poll()`` returns the loop's
milestones as they happen; ``closing()`` sums the loop up at the end.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from shared import baselines, topics
from shared.contracts import ModelStatus, decode
from shared.errors import ContractError
from shared.kafka_config import Target, client_config
from shared.streams import all_streams


def shipped_version(stream: str) -> str:
    """The version of the baseline the gateways ship with ("" if there is none)."""
    path = baselines.baseline_dir(stream) / "manifest.json"
    try:
        return str(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return ""


def _pct(value: Any) -> str:
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


@dataclass
class LoopWatcher:
    """Constructing it does no I/O; ``poll()`` reads what is new."""

    dashboard_url: str
    user: str
    password: str
    cloud_bootstrap: Target
    edge_ids: list[str]
    started: float = field(default_factory=time.monotonic)
    _runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    _states: dict[str, str] = field(default_factory=dict)
    _details: dict[str, str] = field(default_factory=dict)
    # (edge_id, stream) -> version -> last state seen
    _agents: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    # (edge_id, stream) -> the versions it made active, latest last (a rollback pops one)
    _active: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _consumer: Any = None
    api_error: str = ""

    # --- reading -----------------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        auth = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        req = urllib.request.Request(
            self.dashboard_url.rstrip("/") + path, headers={"Authorization": f"Basic {auth}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback URL
            return json.loads(resp.read())

    def _statuses(self) -> list[ModelStatus]:
        if self._consumer is None:
            from confluent_kafka import Consumer

            self._consumer = Consumer(
                client_config(
                    self.cloud_bootstrap,
                    {
                        "group.id": f"fleetsentry-demo-loop-{int(time.time() * 1000)}",
                        "auto.offset.reset": "earliest",
                        "enable.auto.commit": False,
                        "topic.metadata.refresh.interval.ms": 5000,
                    },
                )
            )
            self._consumer.subscribe(
                [f"^({'|'.join(self.edge_ids)})\\.{topics.MODEL_STATUS.replace('-', '[-]')}$"]
            )
        out = []
        for msg in self._consumer.consume(num_messages=1000, timeout=1.0):
            if msg.error() or msg.value() is None:
                continue
            try:
                out.append(decode(ModelStatus, msg.value()))
            except ContractError:
                continue
        return out

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    # --- milestones --------------------------------------------------------------------------

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.started:5.0f}s]"

    def poll(self) -> list[str]:
        """Milestone lines for what happened since the last call."""
        lines: list[str] = []
        try:
            data = self._get("/api/runs")
            self.api_error = ""
        except (OSError, urllib.error.URLError, ValueError) as exc:
            if not self.api_error:
                lines.append(f"{self._stamp()} cloud dashboard not answering yet ({exc})")
            self.api_error = str(exc)
            data = None
        if data is not None:
            lines += self._trainer_lines(data.get("trainer", []))
            lines += self._run_lines(sorted(data.get("runs", []), key=lambda r: r["id"]))
        lines += self._agent_lines(self._statuses())
        return lines

    def _trainer_lines(self, statuses: list[dict[str, Any]]) -> list[str]:
        out = []
        for st in statuses:
            stream, state = st["stream"], st["state"]
            self._details[stream] = st.get("detail") or ""
            if self._states.get(stream) == state:
                continue
            self._states[stream] = state
            if state == "training":
                continue  # the run's own lines say it
            out.append(f"{self._stamp()} cloud trainer, {stream}: {state} - {st['detail']}")
        return out

    def _run_lines(self, runs: list[dict[str, Any]]) -> list[str]:
        out = []
        for run in runs:
            seen = self._runs.get(run["id"])
            if seen is None:
                if run["trigger"] == "drift":
                    out.append(
                        f"{self._stamp()} drift detected ({run['stream']}): {run['trigger_reason']}"
                    )
                out.append(
                    f"{self._stamp()} run #{run['id']} ({run['stream']}, "
                    f"{run['trigger']} by {run['triggered_by']}): training a challenger "
                    f"against {run['champion'] or 'no champion'}"
                )
            if run["decision"] and (seen is None or not seen.get("decision")):
                out.append(self._finished(run))
            self._runs[run["id"]] = run
        return out

    def _finished(self, run: dict[str, Any]) -> str:
        head = f"{self._stamp()} run #{run['id']} ({run['stream']}): "
        if run["decision"] == "failed":
            return head + f"failed - {run['decision_reason']} {run['error']}".rstrip()
        trained = (
            f"challenger {run['challenger']} trained on {run['records']:,} records in "
            f"{run['duration_s']:.0f} s"
        )
        judged = ""
        try:
            detail = self._get(f"/api/runs/{run['id']}")
            ch, cp = detail["metrics"].get("challenger"), detail["metrics"].get("champion")
            if ch and cp:
                judged = (
                    f"; judged against the champion on the same holdout: PR AUC "
                    f"{_num(ch.get('pr_auc'))} vs {_num(cp.get('pr_auc'))}, false-positive "
                    f"rate {_pct(ch.get('false_positive_rate'))} vs "
                    f"{_pct(cp.get('false_positive_rate'))}"
                )
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            pass
        verdict = "PROMOTED" if run["decision"] == "promoted" else "kept the champion"
        return head + f"{trained}{judged} -> {verdict} ({run['decision_reason']})"

    def _agent_lines(self, statuses: list[ModelStatus]) -> list[str]:
        out = []
        for st in sorted(statuses, key=lambda s: s.ts):
            seen = self._agents.setdefault((st.edge_id, st.stream), {})
            if seen.get(st.version) == st.state:
                continue
            seen[st.version] = st.state
            served = self._active.setdefault((st.edge_id, st.stream), [])
            if st.state == "active":
                served.append(st.version)
            elif st.state == "rolled_back" and st.version in served:
                served.remove(st.version)
            why = f" ({st.reason})" if st.reason else ""
            out.append(
                f"{self._stamp()} {st.edge_id} agent, {st.stream}: {st.version} {st.state}{why}"
            )
        return out

    # --- the state of the loop ---------------------------------------------------------------

    def promoted(self) -> list[dict[str, Any]]:
        return [r for r in self._runs.values() if r.get("decision") == "promoted"]

    def busy(self) -> bool:
        """A run is training; drift was seen and the trainer waits for the labels to judge
        a challenger on (episodes still running are labelled as the fleets stop); a drift
        run did not promote and the trainer will try again; or a promoted model is not
        active on every gateway yet."""
        if any(not r.get("decision") for r in self._runs.values()):
            return True
        for stream, trainer in self._states.items():
            detail = self._details.get(stream, "")
            # "watching - drift: ..." is what a drift check says while it prepares the run
            # (or finds it must wait for labels): seconds, between two polls or not.
            drift_seen = trainer == "watching" and detail.startswith("drift:")
            awaits_labels = trainer == "waiting for labels" and "to retrain on drift" in detail
            if trainer == "training" or drift_seen or awaits_labels:
                return True
        for stream in {r["stream"] for r in self._runs.values()}:
            last = max(
                (r for r in self._runs.values() if r["stream"] == stream), key=lambda r: r["id"]
            )
            if (
                last["trigger"] == "drift"
                and last["decision"] != "promoted"
                and self._states.get(stream) == "backing off"
            ):
                return True
        for run in self.promoted():
            latest = max(
                (r for r in self.promoted() if r["stream"] == run["stream"]), key=lambda r: r["id"]
            )
            for edge in self.edge_ids:
                state = self._agents.get((edge, run["stream"]), {}).get(latest["challenger"])
                if state not in ("active", "rejected", "rolled_back"):
                    return True
        return False

    def model_of(self, edge_id: str, stream: str) -> str:
        served = self._active.get((edge_id, stream))
        return served[-1] if served else f"{shipped_version(stream)} (the shipped baseline)"

    def closing(self, streams: tuple[str, ...] | None = None) -> list[str]:
        """The demo's closing lines: its training runs, and each stream's trainer state
        (``streams``: these only; None: every registered stream)."""
        if streams is None:
            streams = tuple(spec.name for spec in all_streams())
        runs = sorted(self._runs.values(), key=lambda r: r["id"])
        by = {d: sum(r.get("decision") == d for r in runs) for d in ("promoted", "kept", "failed")}
        lines = [
            f"training runs: {len(runs)} ({by['promoted']} promoted, {by['kept']} kept "
            f"the champion, {by['failed']} failed)"
        ]
        for r in self.promoted():
            lines.append(
                f"  promoted: {r['challenger']} (run #{r['id']}, {r['trigger']}: "
                f"{r['decision_reason']})"
            )
        for stream in streams:
            state = self._states.get(stream)
            if state:
                lines.append(f"  trainer, {stream}: {state}")
        for edge in self.edge_ids:
            models = ", ".join(f"{s} {self.model_of(edge, s)}" for s in streams)
            lines.append(f"{edge} runs: {models}")
        return lines
