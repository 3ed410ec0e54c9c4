"""``fleetsentry cloud train``: records in, signed model directories out."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cloud.config import login_at
from cloud.trainer import data
from cloud.trainer.errors import TrainerError
from cloud.trainer.pipeline import TrainedModel, TrainSettings, train_stream, write_model_dir
from cloud.trainer.threshold import ThresholdRule
from shared import signing, streams
from shared.contracts import AnonPayment, AnonTelemetry, Label, decode
from shared.kafka_config import Target, bootstrap_of
from shared.tokens import Tokenizer

STREAMS = ("telemetry", "payments")


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def _thresholds(values: Iterable[str]) -> dict[str, ThresholdRule]:
    out: dict[str, ThresholdRule] = {}
    for v in values:
        stream, sep, rule = v.partition(":")
        if not sep or stream not in STREAMS:
            raise click.BadParameter(f"{v!r}: expected STREAM:MODE=VALUE, e.g. "
                                     f"payments:precision=0.9", param_hint="--threshold")
        out[stream] = ThresholdRule.parse(rule)
    return out


@click.command()
@click.option("--events", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Simulator dry-run events file (JSON lines of MQTT messages).")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labels file (JSON lines of Label); default: labels.jsonl beside --events.")
@click.option("--bootstrap", help="Read anon.<stream> from this Kafka instead of files.")
@click.option("--topic-prefix", default="", show_default=True,
              help="Prefix of the anon topics on --bootstrap (e.g. a mirrored edge's alias).")
@click.option("--labels-topic", default=None, help="Read labels from this topic on --bootstrap.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="cloud.toml whose [kafka] login --bootstrap uses (TLS, user, password); "
                   "default: the trainer's login as `fleetsentry infra up` made it.")
@click.option("--stream", "stream_names", multiple=True, type=click.Choice(STREAMS),
              help="Streams to train (default: all).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models"), show_default=True,
              help="Writes one model directory per stream under it: OUT/<stream>/.")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, path_type=Path),
              default=signing.dev_private_key_path(), show_default=True,
              help="Ed25519 signing key (PEM); generated with mode 0600 if missing.")
@click.option("--public-key-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the matching public key here (e.g. OUT/fleet.pub).")
@click.option("--token-secret-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Fleet secret used to tokenize files (any secret works for training).")
@click.option("--epochs", default=TrainSettings.epochs, show_default=True)
@click.option("--batch-size", default=TrainSettings.batch_size, show_default=True)
@click.option("--max-fit-rows", default=TrainSettings.max_fit_rows, show_default=True,
              help="Fit on a random subsample of at most this many normal records.")
@click.option("--seed", default=TrainSettings.seed, show_default=True)
@click.option("--split", type=click.Choice(["time", "vehicle"]), default=TrainSettings.split,
              show_default=True,
              help="Validation and holdout: the latest events (time) or unseen vehicles/cards "
                   "(vehicle; for data pooled from several runs or times of day).")
@click.option("--splits", default=",".join(f"{f:g}" for f in TrainSettings.splits),
              show_default=True, help="Train,validation,holdout fractions.")
@click.option("--threshold", "thresholds", multiple=True, metavar="STREAM:MODE=VALUE",
              help="Threshold rule, e.g. payments:precision=0.9, telemetry:false_episodes=0.5, "
                   "telemetry:alert_rate=0.001.")
@click.option("--parent", default=None, help="Version of the model this one replaces.")
def train(events: Path | None, labels: Path | None, bootstrap: str | None, topic_prefix: str,
          labels_topic: str | None, config_path: Path | None, stream_names: tuple[str, ...], out_dir: Path,
          key_file: Path, public_key_out: Path | None, token_secret_file: Path | None,
          epochs: int, batch_size: int, max_fit_rows: int, seed: int, split: str, splits: str,
          thresholds: tuple[str, ...], parent: str | None) -> None:
    """Train, quantize (int8), evaluate and sign one autoencoder per stream."""
    console = Console(stderr=True)
    if (events is None) == (bootstrap is None):
        raise click.UsageError("give either --events (simulator files) or --bootstrap (Kafka)")
    rules = _thresholds(thresholds)
    names = list(stream_names or STREAMS)
    key = signing.ensure_private_key(key_file)
    login = login_at(bootstrap, config_path, "trainer") if bootstrap else None
    label_list = _labels(events, labels, login, labels_topic)
    with _progress(console) as progress:
        if events is not None:
            secret = token_secret_file.read_bytes().strip() if token_secret_file else None
            records = _from_files(events, label_list, secret, progress)
        else:
            assert login is not None
            records = {s: _from_kafka(login, topic_prefix + f"anon.{s}", s, label_list,
                                      progress) for s in names}
        trained: dict[str, TrainedModel] = {}
        for name in names:
            settings = TrainSettings(epochs=epochs, batch_size=batch_size,
                                     max_fit_rows=max_fit_rows, seed=seed, split=split,
                                     splits=_splits(splits),
                                     threshold=rules.get(name))
            task = progress.add_task(f"train {name}", total=epochs, info="")

            def report(phase: str, done: int, total: int, loss: float | None,
                       task: TaskID = task) -> None:
                info = f"{phase}" + (f"  loss {loss:.4f}" if loss is not None else "")
                progress.update(task, completed=done if phase.startswith("fit") else epochs,
                                info=info)

            trained[name] = train_stream(records[name], settings, parent, report)
            write_model_dir(trained[name], out_dir / name, key)
    if public_key_out is not None:
        signing.write_public_key(key, public_key_out)
    for name, model in trained.items():
        console.print(_summary(model, out_dir / name))
    console.print(f"signed with key {signing.key_fingerprint(key)} ({key_file})")


def _splits(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise click.BadParameter(f"{text!r}: expected three positive fractions, e.g. 0.6,0.2,0.2",
                                 param_hint="--splits")
    return parts[0], parts[1], parts[2]


def _labels(events: Path | None, labels: Path | None, bootstrap: Target | None,
            labels_topic: str | None) -> list[Label]:
    if labels is None and events is not None:
        candidate = events.parent / "labels.jsonl"
        labels = candidate if candidate.exists() else None
    if labels is not None:
        return data.read_labels_file(labels)
    if bootstrap is not None and labels_topic:
        from cloud.kafka_source import read_topic

        return [decode(Label, v) for v in read_topic(bootstrap, labels_topic)]
    raise click.UsageError("labels are needed to check the int8 model and pick the threshold: "
                           "pass --labels FILE (or --labels-topic with --bootstrap)")


def _from_files(events: Path, labels: list[Label], secret: bytes | None,
                progress: Progress) -> dict[str, data.Records]:
    task = progress.add_task("anonymize events", total=None, info="")
    tokenizer = Tokenizer(secret) if secret else None
    out = data.records_from_messages(
        data.read_events_file(events), labels, tokenizer,
        on_progress=lambda n: progress.update(task, completed=n, info=f"{n:,} messages"))
    total = sum(len(r) for r in out.values())
    progress.update(task, total=total, completed=total, info=f"{total:,} events")
    return out


def _from_kafka(bootstrap: Target, topic: str, stream: str, labels: list[Label],
                progress: Progress) -> data.Records:
    from cloud.kafka_source import read_topic

    spec = streams.get(stream)
    task = progress.add_task(f"read {topic}", total=None, info="")
    anon_type: type[AnonTelemetry] | type[AnonPayment] = spec.anon_event  # type: ignore[assignment]

    def records() -> Iterable[AnonTelemetry | AnonPayment]:
        for n, value in enumerate(read_topic(bootstrap, topic), 1):
            if n % 10_000 == 0:
                progress.update(task, completed=n, info=f"{n:,} records")
            yield decode(anon_type, value)

    out = data.records_from_anon(stream, records(), labels)
    if len(out) == 0:
        raise TrainerError(f"topic {topic} on {bootstrap_of(bootstrap)} holds no records")
    return out


def _summary(model: TrainedModel, path: Path) -> Table:
    m = model.manifest.metrics
    table = Table(title=f"{model.manifest.stream}: {model.manifest.version} -> {path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    q = m["quantization"]
    hold = m["holdout"]
    rows = [("threshold", f"{model.manifest.threshold:.5f} ({m['threshold_rule']['mode']}="
                          f"{m['threshold_rule']['value']})"),
            ("ROC AUC float / int8", f"{q['float_roc_auc']:.4f} / {q['int8_roc_auc']:.4f}"),
            ("PR AUC (int8)", _fmt(hold["pr_auc"])),
            ("precision / recall", f"{_fmt(hold['precision'])} / {_fmt(hold['recall'])}")]
    for kind, k in m["per_kind"].items():
        rows.append((f"  {kind}: recall / PR AUC", f"{_fmt(k['recall'])} / {_fmt(k['pr_auc'])}"))
    ep = m.get("episodes")
    if ep:
        rows.append(("episodes alerted within 60 s",
                     f"{ep['detected_within_60s']}/{ep['episodes']}"))
        rows.append(("false alert episodes / 100 vehicle-h",
                     f"{ep['false_alert_episodes_per_100h']:.2f}"))
    for r in rows:
        table.add_row(*r)
    return table


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
