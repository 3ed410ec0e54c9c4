"""Pure pieces of the dashboard: password hashes, signed values, and the live figures."""

from __future__ import annotations

from cloud.dashboard.auth import Signer, Users, hash_password, verify_password
from cloud.dashboard.live import LiveState
from cloud.dashboard.views import fleet
from shared.contracts import ModelStatus, Score, encode


def test_password_hashes_are_salted_and_malformed_ones_never_match() -> None:
    a, b = hash_password("pw"), hash_password("pw")
    assert a != b and a.startswith("scrypt$") and "pw" not in a
    assert verify_password("pw", a) and not verify_password("pW", a)
    for broken in ("", "scrypt$1$2", "pbkdf2$x$y$z$a$b", a.replace("scrypt", "md5")):
        assert not verify_password("pw", broken)
    users = Users({"alice": a})
    assert users.check("alice", "pw") and not users.check("alice", "x")
    assert not users.check("nobody", "pw")


def test_signed_values_are_bound_to_their_purpose() -> None:
    s = Signer(b"0123456789abcdef", 60)
    value = s.dumps({"c": "t"}, "login")
    assert s.loads(value, "login") == {"c": "t"}
    assert s.loads(value, "session") is None  # a login token is no session
    assert s.loads(value[:-2] + "xx", "login") is None
    _sess, cookie = s.new_session("alice", now=1000.0)
    assert s.session(cookie, now=1030.0) is not None
    assert s.session(cookie, now=1000.0 + 61) is None  # expired


def _score(ts: float, anomalous: bool, version: str = "v1") -> bytes:
    return encode(Score(event_id=f"e{ts}", ts=ts, stream="payments", token="card-token-1",
                        score=2.0 if anomalous else 0.1, threshold=1.0, model_version=version,
                        anomalous=anomalous))


class _NoRegistry:
    def streams(self) -> list[str]:
        return []


def test_gateways_go_offline_and_lag_comes_from_heartbeats() -> None:
    live = LiveState(bucket_s=10, window_s=600, offline_after_s=30)
    now = 10_000.0
    for i in range(60):
        live.on_record("edge-1.scores.payments", _score(now - 59 + i, i % 10 == 0), now - 59 + i)
    live.on_record("edge-1.heartbeats", b"\x00", now - 2)
    live.on_record("edge-2.scores.payments", _score(now - 100, False), now - 100)
    live.on_record("edge-2.scores.payments", b"{not json", now - 100)
    view = fleet(live, _NoRegistry(), now)  # type: ignore[arg-type]
    one, two = view["gateways"]
    assert one["online"] and one["replication_lag_s"] == 2.0
    assert one["events_per_s"] == 1.0 and one["alert_rate"] == 0.1
    assert one["models"][0]["version"] == "v1"
    assert not two["online"] and two["replication_lag_s"] == 100.0
    assert view["totals"]["rejected"] == 1
    # A gateway's backlog lands in the minutes it belongs to, not at arrival.
    assert live.events.total("payments", now - 60, now) == 60


def test_a_gateway_shows_the_model_it_reported_active_before_scoring_with_it() -> None:
    live = LiveState(bucket_s=10, window_s=600, offline_after_s=30)
    now = 10_000.0
    live.on_record("edge-1.scores.payments", _score(now - 20, False, "v1"), now - 20)

    def status(version: str, state: str, ts: float) -> bytes:
        return encode(ModelStatus(edge_id="edge-1", stream="payments", version=version,
                                  state=state, ts=ts))

    def model() -> str:
        return str(fleet(live, _NoRegistry(), now)["gateways"][0]["models"][0]["version"])

    live.on_record("edge-1.model-status", status("v2", "shadowing", now - 10), now - 10)
    assert model() == "v1"  # shadowing is not running
    live.on_record("edge-1.model-status", status("v2", "active", now - 5), now - 5)
    assert model() == "v2"
    # A score from before the switch, replicated late, does not take it back ...
    live.on_record("edge-1.scores.payments", _score(now - 8, False, "v1"), now - 1)
    assert model() == "v2"
    # ... a later one does (say the agent rolled back).
    live.on_record("edge-1.scores.payments", _score(now - 1, False, "v1"), now - 1)
    assert model() == "v1"
