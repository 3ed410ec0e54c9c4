"""The ``fleetsentry`` command. Subcommands come from the ``fleetsentry.commands`` entry points,
so this module imports no edge or cloud code until that subcommand runs."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

import click

from shared import __version__
from shared.errors import FleetsentryError

ORDER = ["infra", "sim", "streams", "edge", "cloud", "eval", "demo"]


class LazyGroup(click.Group):
    def _entries(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group="fleetsentry.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(self._entries()) | set(self.commands)
        return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        ep = self._entries().get(cmd_name)
        if ep is None:
            return None
        try:
            cmd: click.Command = ep.load()
        except FleetsentryError as exc:  # e.g. a missing extra: say which pip line fixes it
            raise click.ClickException(str(exc)) from None
        return cmd


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="fleetsentry")
def cli() -> None:
    """fleetsentry: fraud and anomaly detection for vehicle fleets, from edge to cloud."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except FleetsentryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
