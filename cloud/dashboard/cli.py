"""``fleetsentry cloud run`` (the dashboard, and the signer as a separate process) and
``fleetsentry cloud dashboard`` (serve it alone, manage its users).

The dashboard's process never loads the model-signing key: operators' promotions, rollbacks,
approvals and retrains are recorded in the registry as requests, and the signer
(``fleetsentry cloud signer``, :mod:`cloud.signer`) carries them out."""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click

from cloud import config as cloud_config
from cloud.config import CloudConfig
from cloud.dashboard.keeper import Keeper
from cloud.signer.cli import signer_options
from shared import signing, streams
from shared.errors import MissingExtraError

ROLES = ("viewer", "operator")
DEMO_USER = "operator"
DEMO_USER_FILE = "dashboard-demo-user.json"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def session_key(cfg: CloudConfig) -> bytes:
    """The configured session secret, else a random key kept 0600 in the state directory."""
    if cfg.dashboard.session_secret is not None:
        return cfg.dashboard.session_secret.reveal().encode()
    path = cfg.dashboard.state_dir / "dashboard.key"
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    return path.read_text().strip().encode()


def demo_user(state_dir: Path) -> tuple[str, str, str]:
    """(name, password, hash) of the demo user, created once with a random password."""
    from cloud.dashboard.auth import hash_password

    path = state_dir / DEMO_USER_FILE
    if path.exists():
        data = json.loads(path.read_text())
        return data["name"], data["password"], data["password_hash"]
    password = secrets.token_urlsafe(12)
    data = {"name": DEMO_USER, "password": password, "password_hash": hash_password(password)}
    _write_private(path, json.dumps(data, indent=2))
    return data["name"], data["password"], data["password_hash"]


@dataclass
class Server:
    """Everything the dashboard process starts, in start order; ``close()`` stops it in
    reverse (and the signer ``cloud run`` keeps running beside it)."""

    app: Any
    dash: Any
    watcher: Any
    actions: Any
    signer: Keeper | None = None

    def stopping(self) -> None:
        """The dashboard is shutting down: a signer that exits now is not started again."""
        if self.signer is not None:
            self.signer.hold()

    def close(self) -> None:
        if self.signer is not None:
            self.signer.close()
        self.watcher.close()
        self.actions.close()
        self.dash.store.close()


def build(cfg: CloudConfig) -> Server:
    """The live feed, the actions (recorded as requests for the signer) and the app; the
    caller serves it. It holds no signing key and reads no key file."""
    try:
        from cloud.dashboard.actions import Actions
        from cloud.dashboard.app import Dashboard, create_app
        from cloud.dashboard.auth import Signer, Users
        from cloud.dashboard.live import KafkaWatcher, LiveState
        from cloud.dashboard.store import DashboardStore, User
    except ImportError as exc:  # starlette, jinja2 or uvicorn missing
        raise MissingExtraError(exc.name or "starlette", "cloud") from None

    d = cfg.dashboard
    store = DashboardStore(d.state_dir).start()
    configured = {u.name: User(u.name, u.password_hash.reveal(), u.role) for u in d.users}
    if not configured and not store.users():
        name, _pw, h = demo_user(d.state_dir)
        configured = {name: User(name, h, "operator")}
    actions = Actions(cfg.registry.root).start()
    live = LiveState(d.bucket_s, d.window_s, d.offline_after_s)
    watcher = KafkaWatcher(cfg.kafka.login("dashboard"), live).start()
    dash = Dashboard(
        d,
        Users(configured, store),
        Signer(session_key(cfg)),
        live,
        actions,
        store,
        kafka_error=lambda: watcher.error,
    )
    return Server(create_app(dash), dash, watcher, actions)


def start_signer(
    config_path: Path | None, key_file: Path | None, options: dict[str, Any]
) -> Keeper:
    """``fleetsentry cloud signer`` as a child process, started again whenever it exits (see
    :mod:`cloud.dashboard.keeper`): it, not this one, reads the key."""
    return Keeper("the signer", signer_argv(config_path, key_file, options)).start()


def signer_argv(
    config_path: Path | None, key_file: Path | None, options: dict[str, Any]
) -> list[str]:
    """The signer's command line, ``options`` (``cloud run``'s signer options) passed on.

    Only the key file's presence is checked here, so that a missing key stops ``cloud run``
    at once with what to do instead of leaving a dashboard whose requests nobody carries out.
    """
    key = (key_file or signing.dev_private_key_path()).expanduser().absolute()
    if not key.exists():
        raise click.ClickException(
            f"no model-signing key at {key}: create one with `fleetsentry cloud keygen {key}` "
            f"(on one machine, the development key is fine) and give every gateway "
            f"{key.with_suffix('.pub')}, or point --key at the fleet's key"
        )
    argv = [sys.executable, "-m", "cloud.signer", "--key", str(key), "--parent", str(os.getpid())]
    if config_path is not None:
        argv += ["--config", str(config_path)]
    for name, value in options.items():
        flag = "--" + name.removesuffix("_s").replace("_", "-")  # schedule_s: --schedule
        if isinstance(value, bool):
            argv += [flag] if value else []
        else:
            argv += [flag, str(value)]
    return argv


def _address(cfg: CloudConfig) -> str:
    d = cfg.dashboard
    scheme = "https" if d.tls_cert else "http"
    return f"{scheme}://{d.host}:{d.port}/"


def serve(cfg: CloudConfig, server: Server) -> None:
    import uvicorn

    class _Uvicorn(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            server.stopping()
            super().handle_exit(sig, frame)

    d = cfg.dashboard
    uv = _Uvicorn(
        uvicorn.Config(
            server.app,
            host=d.host,
            port=d.port,
            log_level="warning",
            access_log=False,
            ssl_certfile=str(d.tls_cert) if d.tls_cert else None,
            ssl_keyfile=str(d.tls_key) if d.tls_key else None,
        )
    )
    try:
        uv.run()
    finally:
        server.close()


def _banner(cfg: CloudConfig, what: str, server: Server) -> None:
    d = cfg.dashboard
    click.echo(f"{what}: dashboard at {_address(cfg)}")
    if not d.users and server.dash.users.configured(DEMO_USER):
        name, password, _ = demo_user(d.state_dir)
        click.echo(
            f"  sign in as {name} / {password}  (demo user, kept in "
            f"{d.state_dir / DEMO_USER_FILE}; add real users with `fleetsentry cloud "
            f"dashboard user add`)"
        )
    click.echo(f"  registry {cfg.registry.root}, cloud Kafka {cfg.kafka.bootstrap}")
    sys.stdout.flush()


_OPTIONS = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        envvar="FLEETSENTRY_CLOUD_CONFIG",
        help="cloud.toml (default: settings that work on one machine).",
    ),
    click.option("--port", type=int, default=None, help="Overrides [dashboard] port."),
]


def _options(fn: Any) -> Any:
    for opt in reversed(_OPTIONS):
        fn = opt(fn)
    return fn


def _config(config_path: Path | None, port: int | None) -> CloudConfig:
    import msgspec

    cfg = cloud_config.load(config_path)
    streams.use_declarations(cfg.streams.dir)  # the operator's streams on every page too
    if port is not None:
        cfg = msgspec.structs.replace(
            cfg, dashboard=msgspec.structs.replace(cfg.dashboard, port=port)
        )
    return cfg


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


@click.command("run")
@_options
@signer_options
def run(
    config_path: Path | None, port: int | None, key_file: Path | None, **signer_settings: Any
) -> None:
    """The cloud's dashboard and its signer (trainer service, signing key) together: the
    dashboard on one port, the signer as a separate process holding the key."""
    _logging()
    cfg = _config(config_path, port)
    child = start_signer(config_path, key_file, signer_settings)
    try:
        server = build(cfg)
    except BaseException:
        child.close()
        raise
    server.signer = child
    _banner(cfg, "fleetsentry cloud", server)
    serve(cfg, server)


@click.group("dashboard")
def dashboard() -> None:
    """The web dashboard alone (no signing key: a signer carries out its requests), and its
    users."""


@dashboard.command("serve")
@_options
def serve_cmd(config_path: Path | None, port: int | None) -> None:
    """Serve the dashboard alone. It needs no key: promotions, rollbacks, approvals and
    retrains asked for on it wait for `fleetsentry cloud signer` to carry them out."""
    _logging()
    cfg = _config(config_path, port)
    server = build(cfg)
    _banner(cfg, "fleetsentry dashboard", server)
    serve(cfg, server)


@dashboard.command("hash-password")
@click.option("--user", default=None, help="Print a ready [dashboard] users entry for USER.")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="viewer",
    show_default=True,
    help="The entry's role (with --user).",
)
def hash_password_cmd(user: str | None, role: str) -> None:
    """Read a password (twice, hidden) and print its scrypt hash for cloud.toml."""
    from cloud.dashboard.auth import hash_password

    password = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != password:
        raise click.ClickException("the passwords differ")
    h = hash_password(password)
    click.echo(f'{{ name = "{user}", password_hash = "{h}", role = "{role}" }}' if user else h)


# --- users (kept in <state_dir>/dashboard.sqlite; a running dashboard sees changes at once) ---

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="FLEETSENTRY_CLOUD_CONFIG",
    help="cloud.toml (its [dashboard] state_dir).",
)


@dashboard.group("user")
def user() -> None:
    """Add, change and remove dashboard users; a change ends the user's sessions at once."""


@contextmanager
def _users(config_path: Path | None, name: str | None = None) -> Iterator[Any]:
    from cloud.dashboard.errors import DashboardError
    from cloud.dashboard.store import DashboardStore

    cfg = cloud_config.load(config_path)
    if name is not None and any(u.name == name for u in cfg.dashboard.users):
        raise click.ClickException(
            f"{name} is listed in cloud.toml's [dashboard] users: change "
            f"or remove the entry there and restart the dashboard"
        )
    store = DashboardStore(cfg.dashboard.state_dir).start()
    try:
        yield store
    except DashboardError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


def _new_password() -> str:
    from cloud.dashboard.auth import hash_password

    password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return hash_password(password)


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(ROLES),
    default="viewer",
    show_default=True,
    help="viewer: reads everything; operator: may also promote, roll back, retrain.",
)
@_config_option
def user_add(name: str, role: str, config_path: Path | None) -> None:
    """Add a user NAME (asks for the password twice)."""
    from cloud.dashboard.store import User

    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
        raise click.ClickException("a name is 1 to 64 of A-Z a-z 0-9 _ . @ -")
    with _users(config_path, name) as store:
        if store.user(name) is not None:
            raise click.ClickException(
                f"{name} exists: change it with `user passwd` or `user role`"
            )
        store.add_user(User(name, _new_password(), role))
    click.echo(f"added {name} ({role})")


@user.command("passwd")
@click.argument("name")
@_config_option
def user_passwd(name: str, config_path: Path | None) -> None:
    """Set NAME's password; their sessions end."""
    with _users(config_path, name) as store:
        if store.user(name) is None:
            raise click.ClickException(f"no user {name}")
        store.set_password(name, _new_password())
    click.echo(f"password of {name} changed; their sessions ended")


@user.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
@_config_option
def user_role(name: str, role: str, config_path: Path | None) -> None:
    """Give NAME the ROLE; their sessions end."""
    with _users(config_path, name) as store:
        store.set_role(name, role)
    click.echo(f"{name} is now {role}; their sessions ended")


@user.command("remove")
@click.argument("name")
@_config_option
def user_remove(name: str, config_path: Path | None) -> None:
    """Remove NAME; their sessions end at once."""
    with _users(config_path, name) as store:
        ended = store.remove_user(name)
    click.echo(f"removed {name}; {ended} session(s) ended")


@user.command("list")
@_config_option
def user_list(config_path: Path | None) -> None:
    """The users of cloud.toml and of the dashboard's store, with their roles."""
    cfg = cloud_config.load(config_path)
    for u in cfg.dashboard.users:
        click.echo(f"{u.name}\t{u.role}\tcloud.toml")
    with _users(config_path) as store:
        for su in store.users():
            click.echo(f"{su.name}\t{su.role}\t{store.path}")
