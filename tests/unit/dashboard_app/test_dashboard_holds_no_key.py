"""The web-serving process holds no signing key: the dashboard ``cloud dashboard serve`` builds
starts with no key file anywhere, never reads or writes one, and records what operators ask
for (promote, roll back, approve, reject, retrain) for the signer instead of signing it. A
viewer cannot approve or reject a challenger, however the request is sent."""

from __future__ import annotations

import base64
import gc
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient

from cloud.config import CloudConfig, DashboardSettings, KafkaSettings, RegistrySettings
from cloud.dashboard.app import create_app
from cloud.dashboard.cli import build, demo_user
from cloud.dashboard.errors import DashboardError
from cloud.registry import Registry
from shared import signing
from tests.unit.cloud_loop.test_model_registry import model_dir
from tests.unit.dashboard_app.test_dashboard_attacks import USERS, basic, make_dashboard, sign_in


def reachable(root: object, kind: type, limit: int = 500_000) -> list[Any]:
    """Every ``kind`` object reachable from ``root`` through references, modules left out
    (through them everything is reachable, keys or not)."""
    modules = {id(m) for m in sys.modules.values()} | {
        id(vars(m)) for m in sys.modules.values() if hasattr(m, "__dict__")
    }
    seen: set[int] = set()
    found: list[Any] = []
    todo = [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in modules or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if isinstance(obj, kind):
            found.append(obj)
        todo.extend(gc.get_referents(obj))
    assert len(seen) < limit, "the walk stopped early: raise the limit"
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _registry(root: Path, src: Path) -> None:
    """A payments champion v1 and a candidate v2 (signed by a key this test then forgets)."""
    with Registry(root) as reg:
        reg.register(model_dir(src, "v1"), state="champion")
        reg.register(model_dir(src, "v2", parent="v1"))


def test_the_dashboard_server_holds_no_signing_key_and_only_records_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where the development key would be
    _registry(tmp_path / "registry", tmp_path / "src")
    cfg = CloudConfig(
        kafka=KafkaSettings(bootstrap=f"127.0.0.1:{_free_port()}", security="none"),
        registry=RegistrySettings(root=tmp_path / "registry"),
        dashboard=DashboardSettings(state_dir=tmp_path / "state"),
    )
    server = build(cfg)
    try:
        assert not signing.dev_private_key_path().exists()
        assert [p for p in home.rglob("*") if p.is_file()] == []
        assert reachable(server, Ed25519PrivateKey) == []
        name, password, _ = demo_user(tmp_path / "state")
        auth = {
            "Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()
        }
        with TestClient(server.app) as client:
            promote = client.post("/api/actions/promote", json={"version": "v2"}, headers=auth)
            assert promote.status_code == 200, promote.text
            assert "signer" in promote.json()["message"]
            back = client.post("/api/actions/rollback", json={"stream": "payments"}, headers=auth)
            assert back.status_code == 200, back.text
    finally:
        server.close()
    with Registry(tmp_path / "registry") as reg:
        champion = reg.champion("payments")
        assert champion is not None and champion.version == "v1"  # nothing done in-process
        assert reg.latest_release("payments") is None  # nothing signed
        asked = [
            (r.kind, r.version, r.stream, r.actor, r.role, r.state)
            for r in reversed(reg.requests())
        ]
        assert asked == [
            ("promote", "v2", "payments", name, "operator", "pending"),
            ("rollback", None, "payments", name, "operator", "pending"),
        ]


def test_a_viewer_cannot_approve_or_reject_a_challenger(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    _registry(root, tmp_path / "src")
    with Registry(root) as reg:
        run_id = reg.start_run("payments", "drift", "drift-monitor", "feature PSI 0.4")
        reg.finish_run(
            run_id, decision="awaiting approval", decision_reason="better", challenger="v2"
        )
    dash = make_dashboard(tmp_path)
    try:
        with TestClient(create_app(dash)) as client:
            csrf = sign_in(client, "vera")
            runs = client.get("/runs")
            assert runs.status_code == 200 and "awaiting approval" in runs.text
            assert "/actions/approve" not in runs.text  # no buttons for her
            run_page = client.get(f"/runs/{run_id}")
            assert run_page.status_code == 200 and "/actions/approve" not in run_page.text
            for kind in ("approve", "reject"):
                confirm = client.get(f"/actions/{kind}?run={run_id}")
                assert confirm.status_code == 403 and "operator" in confirm.text, kind
                form = client.post(
                    f"/actions/{kind}",
                    data={"run": str(run_id), "csrf_token": csrf},
                    follow_redirects=False,
                )
                assert form.status_code == 403, kind
                api = client.post(
                    f"/api/actions/{kind}", json={"run": run_id}, headers={"X-CSRF-Token": csrf}
                )
                assert api.status_code == 403 and "operator" in api.json()["error"], kind
            client.cookies.clear()
            by_basic = client.post(
                "/api/actions/approve",
                json={"run": run_id},
                headers=basic("vera", USERS["vera"][0]),
            )
            assert by_basic.status_code == 403
            assert dash.actions.registry().requests() == []

            # The operator beside her sees the challenger waiting and may approve it.
            op_csrf = sign_in(client, "alice")
            assert f'href="/actions/approve?run={run_id}"' in client.get("/runs").text
            assert f'href="/actions/reject?run={run_id}"' in client.get(f"/runs/{run_id}").text
            ok = client.post(
                "/api/actions/approve",
                json={"run": run_id, "reason": "checked"},
                headers={"X-CSRF-Token": op_csrf},
            )
            assert ok.status_code == 200, ok.text
        [req] = dash.actions.registry().requests()
        assert (req.kind, req.run_id, req.actor, req.role, req.state) == (
            "approve",
            run_id,
            "alice",
            "operator",
            "pending",
        )
        assert dash.actions.registry().run(run_id).decision == "awaiting approval"
    finally:
        dash.actions.close()
        dash.store.close()


def test_a_request_naming_no_model_or_run_is_refused_at_once(tmp_path: Path) -> None:
    _registry(tmp_path / "registry", tmp_path / "src")
    dash = make_dashboard(tmp_path)
    try:
        actions = dash.actions
        assert not actions.promote("v9", "alice", "operator", "typo").ok
        assert not actions.approve(42, "alice", "operator", "no such run").ok
        with pytest.raises(DashboardError, match="operator"):
            actions.promote("v2", "vera", "viewer", "not hers to ask")
        assert actions.registry().requests() == []
    finally:
        dash.actions.close()
        dash.store.close()


def test_cloud_run_without_a_key_stops_saying_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cloud.dashboard.cli import run

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        f'[registry]\nroot = "{tmp_path / "registry"}"\n'
        f'[dashboard]\nstate_dir = "{tmp_path / "state"}"\nport = {_free_port()}\n'
    )
    for args in ([], ["--key", str(tmp_path / "fleet.key")]):
        result = CliRunner().invoke(run, ["--config", str(toml), *args])
        assert result.exit_code != 0
        assert "fleetsentry cloud keygen" in result.output, result.output
    assert not signing.dev_private_key_path().exists() and not (tmp_path / "fleet.key").exists()
