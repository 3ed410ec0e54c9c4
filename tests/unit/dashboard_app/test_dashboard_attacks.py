"""Attacks on the dashboard's sign-in and actions, each written as the attacker's requests and
what the well-behaved client beside them still gets: a viewer pushing buttons it should not
have, password guessing by name and by address, hashing that would stall everyone else, a
stolen cookie after sign-out or after its user is removed, a retrain flood, and HSTS."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from cloud.config import DashboardSettings
from cloud.dashboard import auth
from cloud.dashboard.actions import Actions
from cloud.dashboard.app import Dashboard, create_app
from cloud.dashboard.auth import SESSION_COOKIE, Signer, Users, hash_password
from cloud.dashboard.cli import dashboard as dashboard_cli
from cloud.dashboard.live import LiveState
from cloud.dashboard.store import DashboardStore, User

# Cheap hashes keep the tests quick; the stored hash carries its own cost.
FAST = {"n": 2**10}
USERS = {"alice": ("alice's password", "operator"), "vera": ("vera's password", "viewer")}


def make_dashboard(tmp_path: Path) -> Dashboard:
    store = DashboardStore(tmp_path).start()
    users = Users(
        {name: User(name, hash_password(pw, **FAST), role) for name, (pw, role) in USERS.items()},
        store,
    )
    actions = Actions(tmp_path / "registry").start()
    return Dashboard(
        DashboardSettings(state_dir=tmp_path), users, Signer(b"k" * 32), LiveState(), actions, store
    )


@pytest.fixture()
def dash(tmp_path: Path) -> Iterator[Dashboard]:
    d = make_dashboard(tmp_path)
    yield d
    d.actions.close()
    d.store.close()


@pytest.fixture()
def client(dash: Dashboard) -> Iterator[TestClient]:
    with TestClient(create_app(dash), base_url="http://testserver") as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "the page carries a CSRF token"
    return m.group(1)


def try_sign_in(client: TestClient, user: str, password: str) -> httpx.Response:
    token = csrf_of(client.get("/login").text)
    return client.post(
        "/login",
        data={"csrf_token": token, "username": user, "password": password, "next": "/runs"},
        follow_redirects=False,
    )


def sign_in(client: TestClient, user: str = "alice") -> str:
    """Signs in; returns the session's CSRF token."""
    resp = try_sign_in(client, user, USERS[user][0])
    assert resp.status_code == 303, resp.text
    return csrf_of(client.get("/runs").text)


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# --- roles -------------------------------------------------------------------------------------


def test_a_viewer_can_look_but_not_promote_roll_back_or_retrain(
    client: TestClient, dash: Dashboard
) -> None:
    csrf = sign_in(client, "vera")
    runs = client.get("/runs")
    assert runs.status_code == 200 and "/actions/" not in runs.text  # no buttons to press
    assert client.get("/api/runs").status_code == 200  # reading is fine
    for kind, form in (
        ("promote", {"version": "x"}),
        ("rollback", {"stream": "payments"}),
        ("retrain", {"stream": "payments"}),
    ):
        confirm = client.get(f"/actions/{kind}?stream=payments&version=x")
        assert confirm.status_code == 403 and "operator" in confirm.text, kind
        post = client.post(
            f"/actions/{kind}", data={**form, "csrf_token": csrf}, follow_redirects=False
        )
        assert post.status_code == 403 and "operator" in post.text, kind
        api = client.post(f"/api/actions/{kind}", json=form, headers={"X-CSRF-Token": csrf})
        assert api.status_code == 403 and "operator" in api.json()["error"], kind
    client.cookies.clear()
    by_basic = client.post(
        "/api/actions/retrain", json={"stream": "payments"}, headers=basic("vera", USERS["vera"][0])
    )
    assert by_basic.status_code == 403 and "viewer" in by_basic.json()["error"]
    assert dash.actions.registry().requests() == []  # nothing recorded for the signer

    # The operator beside her still has the buttons and may use them.
    op_csrf = sign_in(client, "alice")
    assert 'href="/actions/retrain?stream=payments"' in client.get("/runs").text
    done = client.post(
        "/api/actions/retrain", json={"stream": "payments"}, headers={"X-CSRF-Token": op_csrf}
    )
    assert done.status_code == 200, done.text
    [asked] = dash.actions.registry().requests()
    assert (asked.kind, asked.stream, asked.actor, asked.role) == (
        "retrain",
        "payments",
        "alice",
        "operator",
    )


# --- guessing passwords -----------------------------------------------------------------------


def test_five_wrong_passwords_lock_the_name_even_for_the_right_one(client: TestClient) -> None:
    for _ in range(5):
        assert try_sign_in(client, "alice", "guess").status_code == 401
    locked = try_sign_in(client, "alice", USERS["alice"][0])
    assert locked.status_code == 429, locked.text
    assert 0 < int(locked.headers["retry-after"]) <= 15 * 60
    assert "try again" in locked.text.lower() and SESSION_COOKIE not in locked.cookies
    api = client.get("/api/fleet", headers=basic("alice", USERS["alice"][0]))
    assert api.status_code == 429 and int(api.headers["retry-after"]) > 0
    # Another user at the same address is not locked out by it.
    sign_in(client, "vera")


def test_guessing_over_http_basic_locks_the_name_too(client: TestClient) -> None:
    for _ in range(5):
        assert client.get("/api/fleet", headers=basic("alice", "guess")).status_code == 401
    locked = client.get("/api/fleet", headers=basic("alice", USERS["alice"][0]))
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert "locked" in locked.json()["error"]
    assert try_sign_in(client, "alice", USERS["alice"][0]).status_code == 429


def test_a_success_resets_the_count(client: TestClient) -> None:
    for _ in range(2):
        for _ in range(4):
            assert try_sign_in(client, "alice", "guess").status_code == 401
        sign_in(client, "alice")
        client.cookies.clear()


def test_one_address_cycling_names_is_locked_out(dash: Dashboard) -> None:
    app = create_app(dash)
    with (
        TestClient(app, client=("203.0.113.9", 4000)) as attacker,
        TestClient(app, client=("198.51.100.7", 4000)) as bystander,
    ):
        codes = [
            attacker.get("/api/fleet", headers=basic(f"user{i}", "guess")).status_code
            for i in range(20)
        ]
        assert codes == [401] * 20
        refused = attacker.get("/api/fleet", headers=basic("alice", USERS["alice"][0]))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        ok = bystander.get("/api/fleet", headers=basic("alice", USERS["alice"][0]))
        assert ok.status_code == 200, ok.text


# --- hashing off the event loop ---------------------------------------------------------------


def test_pages_are_served_while_passwords_are_being_checked(
    dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three Basic sign-ins whose hashes are held mid-check; a signed-in page still loads."""
    app = create_app(dash)
    gate, lock = threading.Event(), threading.Lock()
    state = {"in_flight": 0, "most": 0}

    def held_verify(password: str, stored: str) -> bool:
        with lock:
            state["in_flight"] += 1
            state["most"] = max(state["most"], state["in_flight"])
        try:
            gate.wait(timeout=3)  # liveness only: the test releases it
            return False
        finally:
            with lock:
                state["in_flight"] -= 1

    async def scenario() -> tuple[int, int, list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as c,
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as bad,
        ):
            form = await c.get("/login")
            signed = await c.post(
                "/login",
                data={
                    "csrf_token": csrf_of(form.text),
                    "username": "alice",
                    "password": USERS["alice"][0],
                },
            )
            assert signed.status_code in (200, 303)
            monkeypatch.setattr(auth, "verify_password", held_verify)
            guesses = [
                asyncio.create_task(bad.get("/api/fleet", headers=basic(f"m{i}", "x")))
                for i in range(3)
            ]
            for _ in range(500):  # until the hashing threads hold two checks
                if state["in_flight"] >= 2 or all(g.done() for g in guesses):
                    break
                await asyncio.sleep(0.01)
            page = await c.get("/api/fleet")
            during = state["in_flight"]
            gate.set()
            answers = await asyncio.gather(*guesses)
            return page.status_code, during, [a.status_code for a in answers]

    try:
        status, during, guessed = asyncio.run(scenario())
    finally:
        gate.set()
    assert status == 200
    assert during >= 1, "the page waited for every password check to finish"
    assert guessed == [401, 401, 401]
    assert state["most"] <= dash.settings.hash_workers  # a bounded pool, not a thread each


# --- sessions ---------------------------------------------------------------------------------


def _cli(tmp_path: Path, *args: str, input: str | None = None) -> Any:
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        f'[dashboard]\nstate_dir = "{tmp_path}"\n[registry]\nroot = "{tmp_path / "registry"}"\n'
    )
    return CliRunner().invoke(dashboard_cli, [*args, "--config", str(toml)], input=input)


def test_a_copied_cookie_dies_with_sign_out(client: TestClient) -> None:
    csrf = sign_in(client, "alice")
    stolen = client.cookies[SESSION_COOKIE]
    assert (
        client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    )
    client.cookies.set(SESSION_COOKIE, stolen)
    assert client.get("/api/fleet").status_code == 401
    assert client.get("/fleet", follow_redirects=False).status_code == 303


def test_removing_a_user_or_changing_their_password_or_role_ends_their_sessions(
    client: TestClient, tmp_path: Path
) -> None:
    password = "bob's password"
    added = _cli(
        tmp_path, "user", "add", "bob", "--role", "operator", input=f"{password}\n{password}\n"
    )
    assert added.exit_code == 0, added.output

    def bob_signs_in(pw: str = password) -> str:
        client.cookies.clear()
        resp = try_sign_in(client, "bob", pw)
        assert resp.status_code == 303, resp.text
        return client.cookies[SESSION_COOKIE]

    def still_in(cookie: str) -> int:
        client.cookies.set(SESSION_COOKIE, cookie)
        return client.get("/api/fleet").status_code

    cookie = bob_signs_in()
    assert still_in(cookie) == 200
    changed = _cli(tmp_path, "user", "role", "bob", "viewer")
    assert changed.exit_code == 0, changed.output
    assert still_in(cookie) == 401

    cookie = bob_signs_in()
    new = "bob's new password"
    assert _cli(tmp_path, "user", "passwd", "bob", input=f"{new}\n{new}\n").exit_code == 0
    assert still_in(cookie) == 401

    cookie = bob_signs_in(new)
    removed = _cli(tmp_path, "user", "remove", "bob")
    assert removed.exit_code == 0, removed.output
    assert still_in(cookie) == 401
    client.cookies.clear()
    assert try_sign_in(client, "bob", new).status_code == 401


# --- retrain ----------------------------------------------------------------------------------


def test_a_retrain_flood_records_one_per_stream(client: TestClient, dash: Dashboard) -> None:
    csrf = sign_in(client, "alice")

    def retrain(stream: str) -> httpx.Response:
        return client.post(
            "/api/actions/retrain", json={"stream": stream}, headers={"X-CSRF-Token": csrf}
        )

    first = retrain("payments")
    assert first.status_code == 200, first.text
    flood = [retrain("payments").status_code for _ in range(10)]
    assert flood == [409] * 10
    again = retrain("payments").json()
    assert "already" in again["message"] and "payments" in again["message"]
    assert retrain("telemetry").status_code == 200  # another stream waits its turn
    assert retrain("telemetry").status_code == 409
    reg = dash.actions.registry()
    assert sorted(r.stream for r in reg.requests()) == ["payments", "telemetry"]
    # The signer picks the payments retrain up: still open while it runs, free once done.
    picked = reg.claim_request(("retrain",))
    assert picked is not None and picked.stream == "payments"
    assert retrain("payments").status_code == 409
    reg.finish_request(picked.id, "done", "run 1: kept")
    assert retrain("payments").status_code == 200
    assert [r.stream for r in reg.requests(("pending",))] == ["payments", "telemetry"]


# --- HSTS -------------------------------------------------------------------------------------


def test_hsts_over_tls_only(dash: Dashboard) -> None:
    app = create_app(dash)
    with TestClient(app, base_url="https://testserver") as tls:
        sts = tls.get("/login").headers.get("strict-transport-security", "")
        assert re.fullmatch(r"max-age=(\d+); includeSubDomains", sts), sts
        assert int(sts.split("=")[1].split(";")[0]) >= 180 * 86400
    with TestClient(app, base_url="http://testserver") as plain:
        assert "strict-transport-security" not in plain.get("/login").headers
