"""``fleetsentry cloud train``: records in, signed model directories out."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cloud.config import load, login_at
from cloud.trainer import data
from cloud.trainer.errors import TrainerError
from cloud.trainer.pipeline import TrainedModel, TrainSettings, train_stream, write_model_dir
from cloud.trainer.threshold import ThresholdRule, budget_warning
from shared import signing, streams
from shared.contracts import AnonRecord, AnyAnon, Label, decode
from shared.declarations.catalog import BUILTIN_NAMES, load_streams
from shared.errors import ConfigError
from shared.kafka_config import Target, bootstrap_of
from shared.tokens import Tokenizer

# The built-in streams; cloud.toml's [streams] dir adds the operator's declared ones.
STREAMS = BUILTIN_NAMES


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    )


def _thresholds(values: Iterable[str], known: Iterable[str] = STREAMS) -> dict[str, ThresholdRule]:
    out: dict[str, ThresholdRule] = {}
    known = list(known)
    for v in values:
        stream, sep, rule = v.partition(":")
        if not sep or stream not in known:
            raise click.BadParameter(
                f"{v!r}: expected STREAM:MODE=VALUE with STREAM one of "
                f"{', '.join(known)}, e.g. payments:precision=0.9",
                param_hint="--threshold",
            )
        out[stream] = ThresholdRule.parse(rule)
    return out


def _known_streams(config_path: Path | None) -> list[str]:
    """The built-in streams and those declared in the config's ``[streams] dir``, registered."""
    try:
        directory = load(config_path).streams.dir
        known = list(load_streams(directory))
        streams.use_declarations(directory)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    return known


def _chosen(names: tuple[str, ...], known: list[str]) -> list[str]:
    unknown = [n for n in names if n not in known]
    if unknown:
        raise click.BadParameter(
            f"unknown stream {unknown[0]!r}; the streams are: {', '.join(known)} (the built-in "
            "ones and those declared in cloud.toml's [streams] dir)",
            param_hint="--stream",
        )
    return list(dict.fromkeys(names))


def fit_options(command: Any) -> Any:
    """--epochs, --batch-size, --max-fit-rows, --seed, --split and --splits: how each stream's
    model is fitted, handed to the command as one ``fit`` (:class:`TrainSettings`)."""

    @functools.wraps(command)
    def with_fit(
        *args: Any,
        epochs: int,
        batch_size: int,
        max_fit_rows: int,
        seed: int,
        split: str,
        splits: str,
        **kw: Any,
    ) -> Any:
        fit = TrainSettings(
            epochs=epochs,
            batch_size=batch_size,
            max_fit_rows=max_fit_rows,
            seed=seed,
            split=split,
            splits=_splits(splits),
        )
        return command(*args, fit=fit, **kw)

    for option in reversed(
        [
            click.option("--epochs", default=TrainSettings.epochs, show_default=True),
            click.option("--batch-size", default=TrainSettings.batch_size, show_default=True),
            click.option(
                "--max-fit-rows",
                default=TrainSettings.max_fit_rows,
                show_default=True,
                help="Fit on a random subsample of at most this many normal records.",
            ),
            click.option("--seed", default=TrainSettings.seed, show_default=True),
            click.option(
                "--split",
                type=click.Choice(["time", "vehicle"]),
                default=TrainSettings.split,
                show_default=True,
                help="Validation and holdout: the latest events (time) or unseen vehicles/cards "
                "(vehicle; for data pooled from several runs or times of day).",
            ),
            click.option(
                "--splits",
                default=",".join(f"{f:g}" for f in TrainSettings.splits),
                show_default=True,
                help="Train,validation,holdout fractions.",
            ),
        ]
    ):
        with_fit = option(with_fit)
    return with_fit


@click.command()
@click.option(
    "--events",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Simulator dry-run events file (JSON lines of MQTT messages).",
)
@click.option(
    "--labels",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Labels file (JSON lines of Label); default: labels.jsonl beside --events.",
)
@click.option("--bootstrap", help="Read anon.<stream> from this Kafka instead of files.")
@click.option(
    "--topic-prefix",
    default="",
    show_default=True,
    help="Prefix of the anon topics on --bootstrap (e.g. a mirrored edge's alias).",
)
@click.option("--labels-topic", default=None, help="Read labels from this topic on --bootstrap.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="cloud.toml: its [streams] dir declares streams beside the built-in ones, "
    "and its [kafka] login is the one --bootstrap uses (TLS, user, password); "
    "default: the built-in streams, and the trainer's login as `fleetsentry "
    "infra up` made it.",
)
@click.option(
    "--stream",
    "stream_names",
    multiple=True,
    metavar="NAME",
    help="Streams to train: telemetry, payments or a declared stream (default: "
    "every stream the --events file holds; with --bootstrap, the built-in "
    "ones).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    help="Writes one model directory per stream under it: OUT/<stream>/.",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=signing.dev_private_key_path(),
    show_default=True,
    help="Ed25519 signing key (PEM); generated with mode 0600 if missing.",
)
@click.option(
    "--public-key-out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the matching public key here (e.g. OUT/fleet.pub).",
)
@click.option(
    "--token-secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Fleet secret used to tokenize files (any secret works for training).",
)
@fit_options
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="STREAM:MODE=VALUE",
    help="Threshold rule, e.g. payments:precision=0.9, telemetry:false_episodes=0.5, "
    "reefer:alert_rate=0.001. Default: the stream declaration's [training] threshold "
    "(payments precision=0.9, telemetry false_episodes=0.5, a declared stream "
    "alert_rate=0.001 unless it says otherwise).",
)
@click.option("--parent", default=None, help="Version of the model this one replaces.")
def train(
    events: Path | None,
    labels: Path | None,
    bootstrap: str | None,
    topic_prefix: str,
    labels_topic: str | None,
    config_path: Path | None,
    stream_names: tuple[str, ...],
    out_dir: Path,
    key_file: Path,
    public_key_out: Path | None,
    token_secret_file: Path | None,
    fit: TrainSettings,
    thresholds: tuple[str, ...],
    parent: str | None,
) -> None:
    """Train, quantize (int8), evaluate and sign one autoencoder per stream.

    A declared stream trains without labels: its threshold then comes from a budget (default
    alert_rate=0.001 of its presumed-normal events), and the run reports what it can measure
    (alert rate, alert episodes per device-hour, scores, the features driving the alerts).
    """
    console = Console(stderr=True)
    if (events is None) == (bootstrap is None):
        raise click.UsageError("give either --events (simulator files) or --bootstrap (Kafka)")
    known = _known_streams(config_path)
    rules = _thresholds(thresholds, known)
    names = _chosen(stream_names, known) or (known if events is not None else list(STREAMS))
    key = signing.ensure_private_key(key_file)
    login = login_at(bootstrap, config_path, "trainer") if bootstrap else None
    builtin_wanted = any(n in BUILTIN_NAMES for n in names) and (
        bool(stream_names) or events is None
    )
    label_list = _labels(events, labels, login, labels_topic, required=builtin_wanted)
    with _progress(console) as progress:
        if events is not None:
            secret = token_secret_file.read_bytes().strip() if token_secret_file else None
            records = _from_files(events, label_list, secret, progress)
        else:
            assert login is not None
            records = _from_topics(login, topic_prefix, names, label_list, progress)
        if not stream_names and events is not None:  # every stream the file holds
            names = _streams_held(names, records, known, label_list)
        empty = [n for n in names if len(records[n]) == 0]
        if empty:
            where = _source(events, login, topic_prefix, empty[0])
            raise TrainerError(f"{where} holds no {empty[0]} events")
        trained = {}
        for name in names:
            settings = dataclasses.replace(
                fit, threshold=rules.get(name), allow_unlabelled=name not in BUILTIN_NAMES
            )
            report = _report(progress, name, fit.epochs)
            trained[name] = train_stream(records[name], settings, parent, report)
            write_model_dir(trained[name], out_dir / name, key)
    if public_key_out is not None:
        signing.write_public_key(key, public_key_out)
    _print_results(console, trained, out_dir)
    console.print(f"signed with key {signing.key_fingerprint(key)} ({key_file})")


def _from_topics(
    login: Target, prefix: str, names: list[str], labels: list[Label], progress: Progress
) -> dict[str, data.Records]:
    """Each stream's records from its ``<prefix>anon.<stream>`` topic."""
    return {s: _from_kafka(login, f"{prefix}anon.{s}", s, labels, progress) for s in names}


def _source(events: Path | None, login: Target | None, prefix: str, name: str) -> str:
    """Where a stream's records came from, for an error message."""
    return f"{events}" if login is None else f"topic {prefix}anon.{name} on {bootstrap_of(login)}"


def _streams_held(
    names: list[str], records: dict[str, data.Records], known: list[str], label_list: list[Label]
) -> list[str]:
    """The streams a file holds events of (a built-in one only with labels)."""
    names = [n for n in names if len(records[n]) > 0]
    if not names:
        raise TrainerError(f"the data holds no events of any stream: {', '.join(known)}")
    if any(n in BUILTIN_NAMES for n in names) and not label_list:
        raise click.UsageError(_NEEDS_LABELS)
    return names


def _report(
    progress: Progress, name: str, epochs: int
) -> Callable[[str, int, int, float | None], None]:
    """A training progress callback: the fit's epochs, then the later phases, on one bar."""
    task = progress.add_task(f"train {name}", total=epochs, info="")

    def report(phase: str, done: int, total: int, loss: float | None) -> None:
        info = f"{phase}" + (f"  loss {loss:.4f}" if loss is not None else "")
        progress.update(task, completed=done if phase.startswith("fit") else epochs, info=info)

    return report


def _print_results(console: Console, trained: dict[str, TrainedModel], out_dir: Path) -> None:
    for name, model in trained.items():
        console.print(_summary(model, out_dir / name))
        warning = budget_warning(name, model.manifest.metrics.get("threshold_rule", {}))
        if warning:
            console.print(f"warning: {warning}", soft_wrap=True)
        u = model.manifest.metrics.get("unlabelled")
        if u and not model.holdout.labelled.any():
            console.print(
                f"{name}: detection quality {u['detection_quality']}; the figures "
                "above are what the model does on presumed-normal data",
                soft_wrap=True,
            )


def _splits(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise click.BadParameter(
            f"{text!r}: expected three positive fractions, e.g. 0.6,0.2,0.2", param_hint="--splits"
        )
    return parts[0], parts[1], parts[2]


_NEEDS_LABELS = (
    "labels are needed to check the built-in streams' int8 models and pick their "
    "thresholds: pass --labels FILE (or --labels-topic with --bootstrap)"
)


def _labels(
    events: Path | None,
    labels: Path | None,
    bootstrap: Target | None,
    labels_topic: str | None,
    required: bool = True,
) -> list[Label]:
    """The labels file (or topic); a declared stream trains without (``required=False``)."""
    if labels is None and events is not None:
        candidate = events.parent / "labels.jsonl"
        labels = candidate if candidate.exists() else None
    if labels is not None:
        return data.read_labels_file(labels)
    if bootstrap is not None and labels_topic:
        from cloud.kafka_source import read_topic

        return [decode(Label, v) for v in read_topic(bootstrap, labels_topic)]
    if not required:
        return []
    raise click.UsageError(_NEEDS_LABELS)


def _from_files(
    events: Path, labels: list[Label], secret: bytes | None, progress: Progress
) -> dict[str, data.Records]:
    task = progress.add_task("anonymize events", total=None, info="")
    tokenizer = Tokenizer(secret) if secret else None
    out = data.records_from_messages(
        data.read_events_file(events),
        labels,
        tokenizer,
        on_progress=lambda n: progress.update(task, completed=n, info=f"{n:,} messages"),
    )
    total = sum(len(r) for r in out.values())
    progress.update(task, total=total, completed=total, info=f"{total:,} events")
    return out


def _from_kafka(
    bootstrap: Target, topic: str, stream: str, labels: list[Label], progress: Progress
) -> data.Records:
    from cloud.kafka_source import read_topic

    spec = streams.get(stream)
    task = progress.add_task(f"read {topic}", total=None, info="")
    anon_type = spec.anon_event

    def records() -> Iterable[AnyAnon]:
        for n, value in enumerate(read_topic(bootstrap, topic), 1):
            if n % 10_000 == 0:
                progress.update(task, completed=n, info=f"{n:,} records")
            rec: AnyAnon = decode(anon_type, value)  # type: ignore[assignment]
            if isinstance(rec, AnonRecord) and rec.stream != stream:
                continue  # another stream's record on this topic
            yield rec

    out = data.records_from_anon(stream, records(), labels)
    if len(out) == 0:
        progress.update(task, info=f"no records on {bootstrap_of(bootstrap)}")
    return out


def _summary(model: TrainedModel, path: Path) -> Table:
    m = model.manifest.metrics
    table = Table(title=f"{model.manifest.stream}: {model.manifest.version} -> {path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    q = m["quantization"]
    hold = m["holdout"]
    rows = [
        (
            "threshold",
            f"{model.manifest.threshold:.5f} ({m['threshold_rule']['mode']}="
            f"{m['threshold_rule']['value']})",
        )
    ]
    if "int8_roc_auc" in q:
        rows += [
            ("ROC AUC float / int8", f"{q['float_roc_auc']:.4f} / {q['int8_roc_auc']:.4f}"),
            ("PR AUC (int8)", _fmt(hold["pr_auc"])),
            ("precision / recall", f"{_fmt(hold['precision'])} / {_fmt(hold['recall'])}"),
        ]
    else:
        rows.append(("int8 / float rank agreement", f"{q['rank_agreement']:.4f}"))
    for kind, k in m["per_kind"].items():
        rows.append((f"  {kind}: recall / PR AUC", f"{_fmt(k['recall'])} / {_fmt(k['pr_auc'])}"))
    ep = m.get("episodes")
    if ep:
        rows.append(
            ("episodes alerted within 60 s", f"{ep['detected_within_60s']}/{ep['episodes']}")
        )
        rows.append(
            ("false alert episodes / 100 vehicle-h", f"{ep['false_alert_episodes_per_100h']:.2f}")
        )
    u = m.get("unlabelled")
    if u:
        rows += _unlabelled_rows(u)
    for r in rows:
        table.add_row(*r)
    return table


def _unlabelled_rows(u: dict[str, Any]) -> list[tuple[str, str]]:
    """What a run measures on its presumed-normal holdout events."""
    s = u["scores"]
    per_h = u["alert_episodes_per_device_hour"]
    rows = [
        (
            "holdout alert rate (presumed normal)",
            f"{_fmt(u['alert_rate'], 5)} ({u['alerts']} of {u['events']} events)",
        ),
        (
            "alert episodes / device-hour",
            f"{_fmt(per_h, 4)} ({u['alert_episodes']} in {u['device_hours']:.1f} h)",
        ),
        (
            "score p50 / p90 / p99 / max",
            f"{s['p50']:.4f} / {s['p90']:.4f} / {s['p99']:.4f} / {_fmt(s['max'], 4)}",
        ),
        ("  vs threshold", f"{s['threshold']:.4f}"),
    ]
    for i, d in enumerate(u["drivers"]):
        rows.append(
            (
                "alerts driven by" if i == 0 else "",
                f"{d['label']} ({d['feature']}) {100 * d['share']:.0f} %",
            )
        )
    return rows


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"
