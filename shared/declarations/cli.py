"""``fleetsentry streams``: infer a declaration from a recording, check declarations."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from shared.declarations.catalog import check_runnable, load_streams
from shared.declarations.errors import DeclarationError
from shared.declarations.loader import load_file, load_text
from shared.declarations.schema import Stream
from shared.errors import ConfigError

# A declaration that does not load: the same exit code as a usage error.
BAD_DECLARATION = 2


@click.group()
def streams() -> None:
    """Stream declarations: infer one from a recording, check them (docs/streams.md)."""


@streams.command("infer")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    default="-",
    show_default=True,
    help="Where to write the declaration (- for standard output).",
)
@click.option("--name", default=None, help="The stream's name (default: from the file name).")
@click.option(
    "--sample",
    "rows",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="How many rows, from the start of the file, to infer from.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    default=None,
    help="The file's format (default: from its extension).",
)
@click.option("--device", default=None, help="The column naming the device (default: guessed).")
@click.option("--time", default=None, help="The column holding the event time (default: guessed).")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def infer_cmd(
    file: Path,
    out: str,
    name: str | None,
    rows: int,
    fmt: str | None,
    device: str | None,
    time: str | None,
    force: bool,
) -> None:
    """Write a first declaration for the recording FILE (CSV, JSON lines or Parquet), every
    guess explained in a comment; edit it, then run `fleetsentry streams check` on it."""
    from shared.declarations import infer

    try:
        decl = infer.infer(infer.read_sample(file, fmt, rows), name, device, time)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    text = infer.render(decl)
    target = f"{decl.name}.toml" if out == "-" else Path(out).name
    stream = load_text(text, target)  # a bug if it fails: the inference writes what loads
    check_runnable(stream)
    if out == "-":
        click.echo(text, nl=False)
    else:
        path = Path(out)
        if path.exists() and not force:
            raise click.ClickException(f"{path} exists: pass --force to overwrite it")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # a stream directory, new
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {path}: {exc}") from None
    pii = ", ".join(sorted(stream.pii_fields)) or "none"
    click.echo(
        f"{stream.name}: {len(stream.fields)} fields, {len(stream.features)} features, "
        f"personal data: {pii}; from {decl.sample.rows:,} rows of {file.name}"
        + ("" if out == "-" else f" -> {out}"),
        err=True,
    )


@streams.command("check")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def check_cmd(path: Path) -> None:
    """Load and validate the declaration PATH, or every *.toml of the directory PATH, as a
    gateway does; print each stream, or the error naming the file and key (exit code 2)."""
    try:
        loaded = _load(path)
    except DeclarationError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(BAD_DECLARATION)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not loaded:
        click.echo(f"no declarations (*.toml) in {path}", err=True)
    for s in loaded:
        click.echo(
            f"{s.source}: {s.name}  topic fleet/{{{s.device.field}}}/{s.topic}  "
            f"device {s.device.field} {s.device.pattern}  "
            f"{len(s.features)} features  {s.feature_spec}"
        )


def _load(path: Path) -> list[Stream]:
    if path.is_dir():
        builtin = set(load_streams(None))
        return [s for s in load_streams(path).values() if s.name not in builtin]
    stream = load_file(path)
    for s in load_streams(None).values():  # as load_streams does for a directory
        for key, mine, theirs in (("name", stream.name, s.name), ("topic", stream.topic, s.topic)):
            if mine == theirs:
                raise DeclarationError(
                    stream.source,
                    f"stream.{key}",
                    f"{mine!r} is already declared by {s.source} (built in)",
                )
    check_runnable(stream)
    return [stream]
