"""``fleetsentry eval``: how well the edge detects, from its scores and alerts and the labels."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
from rich.console import Console
from rich.table import Table

from cloud import config as cloud_config
from cloud.config import login_at
from cloud.evaluation.episode_report import EpisodeRule
from cloud.evaluation.report import Report, evaluate
from shared import streams
from shared.contracts import Alert, Label, Score, decode
from shared.kafka_config import Target

T = TypeVar("T", bound=msgspec.Struct)


def read_jsonl(path: Path, kind: type[T]) -> list[T]:
    decoder = msgspec.json.Decoder(kind)
    out: list[T] = []
    for lineno, line in enumerate(path.read_bytes().splitlines(), 1):
        if line.strip():
            try:
                out.append(decoder.decode(line))
            except msgspec.DecodeError as exc:
                raise click.ClickException(
                    f"{path}:{lineno}: not a {kind.__name__}: {exc}"
                ) from None
    return out


def _from_kafka(
    bootstrap: Target,
    prefix: str,
    topics: Iterable[str],
    kind: type[T],
    optional: frozenset[str] | set[str] = frozenset(),
) -> list[T]:
    from cloud.kafka_source import KafkaReadError, read_topic

    out: list[T] = []
    for t in topics:
        try:
            out += [decode(kind, v) for v in read_topic(bootstrap, prefix + t)]
        except KafkaReadError as exc:
            if t not in optional or "does not exist" not in str(exc):
                raise
    return out


@click.command("eval")
@click.option(
    "--labels",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Simulator labels (JSON lines of Label).",
)
@click.option("--bootstrap", help="Read scores.* and alerts from this Kafka.")
@click.option(
    "--topic-prefix",
    default="",
    show_default=True,
    help="Prefix of the topics on --bootstrap (e.g. a mirrored edge's alias).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="cloud.toml whose [kafka] login --bootstrap uses (TLS, user, password); "
    "default: the trainer's login as `fleetsentry infra up` made it.",
)
@click.option(
    "--scores",
    "score_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Offline: JSON lines of Score (repeatable) instead of Kafka.",
)
@click.option(
    "--alerts",
    "alert_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Offline: JSON lines of Alert; without it episodes replay the edge's rule.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval-report"),
    show_default=True,
    help="Writes report.json and report.png here.",
)
@click.option(
    "--within",
    default=60.0,
    show_default=True,
    help="Seconds within which a fault episode counts as detected in time.",
)
@click.option("--open-events", default=EpisodeRule.open_events, show_default=True)
@click.option("--open-window", default=EpisodeRule.open_window_s, show_default=True)
@click.option("--quiet-gap", default=EpisodeRule.quiet_gap_s, show_default=True)
def eval_cmd(
    labels: Path,
    bootstrap: str | None,
    topic_prefix: str,
    config_path: Path | None,
    score_files: tuple[Path, ...],
    alert_file: Path | None,
    out_dir: Path,
    within: float,
    open_events: int,
    open_window: float,
    quiet_gap: float,
) -> None:
    """Join scores and alerts with labels by event_id and report detection quality."""
    if bool(bootstrap) == bool(score_files):
        raise click.UsageError("give either --bootstrap (Kafka) or --scores FILE")
    label_list = read_jsonl(labels, Label)
    # The built-in streams, and those declared in cloud.toml's [streams] dir.
    known = streams.use_declarations(cloud_config.load(config_path).streams.dir)
    alerts: list[Alert] | None
    if bootstrap:
        login = login_at(bootstrap, config_path, "trainer")
        # A declared stream whose gateways sent nothing yet has no topic: not an error.
        scores = _from_kafka(
            login,
            topic_prefix,
            [s.scores_topic for s in known],
            Score,
            optional={s.scores_topic for s in known if s.declaration},
        )
        alerts = _from_kafka(login, topic_prefix, ["alerts"], Alert)
    else:
        scores = [s for f in score_files for s in read_jsonl(f, Score)]
        alerts = read_jsonl(alert_file, Alert) if alert_file else None
    if not scores:
        raise click.ClickException("no scores to evaluate")
    rule = EpisodeRule(open_events, open_window, quiet_gap)
    report = evaluate(scores, label_list, alerts, rule, within)
    write_report(report, out_dir)
    Console().print(render(report.data, within))
    click.echo(f"report: {out_dir / 'report.json'}, chart: {out_dir / 'report.png'}")


def write_report(report: Report, out_dir: Path) -> None:
    from cloud.evaluation.plot import write_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.data, indent=2) + "\n")
    write_chart(report.curves, out_dir / "report.png")


def render(data: dict[str, Any], within: float) -> Table:
    table = Table(title="Detection report")
    for col in ("stream / kind", "events", "labelled", "ROC AUC", "PR AUC", "precision", "recall"):
        table.add_column(col, justify="left" if col.startswith("stream") else "right")
    for stream, block in data["streams"].items():
        table.add_row(*_row(f"[bold]{stream}", block))
        for kind, k in block["per_kind"].items():
            table.add_row(*_row(f"  {kind}", k))
        ep = block.get("episodes")
        if ep:
            table.add_row(
                f"  fault episodes alerted within {within:g} s",
                f"{ep[f'detected_within_{within:g}s']}/{ep['episodes']}",
                "",
                "",
                "",
                "",
                "",
            )
            table.add_row(
                f"  false alert episodes per 100 vehicle-h (a fault's first "
                f"{ep.get('fault_tail_s', 0):g} s after its end count as the fault)",
                f"{ep['false_alert_episodes_per_100h']:.2f}",
                "",
                "",
                "",
                "",
                "",
            )
    return table


def _row(name: str, b: dict[str, Any]) -> list[str]:
    return [name, str(b["events"]), str(b["labelled"])] + [
        "n/a" if b[k] is None else f"{b[k]:.3f}"
        for k in ("roc_auc", "pr_auc", "precision", "recall")
    ]
