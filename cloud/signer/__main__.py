"""``python -m cloud.signer``: the signer, as ``fleetsentry cloud run`` starts it."""

import sys

import click

from cloud.signer.cli import signer
from shared.errors import FleetsentryError

if __name__ == "__main__":
    try:
        signer(prog_name="fleetsentry cloud signer")
    except FleetsentryError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
