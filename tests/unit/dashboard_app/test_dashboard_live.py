"""Pure pieces of the dashboard: password hashes, signed values, and the live figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud import config as cloud_config
from cloud.dashboard.auth import Signer, Users, hash_password, verify_password
from cloud.dashboard.errors import BadQuery
from cloud.dashboard.live import LiveState
from cloud.dashboard.store import DashboardStore, User
from cloud.dashboard.views import chart_window, detection, fleet, gateway, window_choices
from cloud.registry import Registry
from shared.contracts import ModelState, ModelStatus, Score, encode
from shared.errors import FleetsentryError


def test_password_hashes_are_salted_and_malformed_ones_never_match() -> None:
    a, b = hash_password("pw"), hash_password("pw")
    # The password never appears in the hash (a 2-letter one may, by chance, in the base64).
    secret = "correct-horse-battery"
    assert a != b and a.startswith("scrypt$") and secret not in hash_password(secret)
    assert verify_password("pw", a) and not verify_password("pW", a)
    for broken in ("", "scrypt$1$2", "pbkdf2$x$y$z$a$b", a.replace("scrypt", "md5")):
        assert not verify_password("pw", broken)
    users = Users({"alice": a})
    assert users.check("alice", "pw") and not users.check("alice", "x")
    assert not users.check("nobody", "pw")


def test_signed_values_are_bound_to_their_purpose() -> None:
    s = Signer(b"0123456789abcdef")
    value = s.dumps({"c": "t"}, "login")
    assert s.loads(value, "login") == {"c": "t"}
    assert s.loads(value, "session") is None  # a login token is no session
    assert s.loads(value[:-2] + "xx", "login") is None


def test_sessions_expire_and_end_with_any_change_to_their_user(tmp_path: Path) -> None:
    store = DashboardStore(tmp_path).start()
    try:
        alice = User("alice", hash_password("pw", n=2**10), "operator")
        row, token = store.new_session(alice, 60, now=1000.0)
        assert store.session(token, now=1030.0) == row and row.stamp == alice.stamp
        assert store.session(token, now=1000.0 + 61) is None  # expired
        assert store.session(token + "x", now=1030.0) is None
        files = list(tmp_path.glob("dashboard.sqlite*"))  # with its -wal and -shm
        assert all(token.encode() not in f.read_bytes() for f in files)  # kept hashed
        assert all(f.stat().st_mode & 0o077 == 0 for f in files)
        # A user of cloud.toml edited and the dashboard restarted: the stamp no longer fits.
        for changed in (
            User("alice", alice.password_hash, "viewer"),
            User("alice", hash_password("pw", n=2**10), "operator"),
        ):
            assert changed.stamp != row.stamp
    finally:
        store.close()


def test_users_from_before_roles_are_operators_and_new_entries_say_theirs(tmp_path: Path) -> None:
    toml = tmp_path / "cloud.toml"
    toml.write_text(
        '[dashboard]\nusers = [{ name = "alice", password_hash = "scrypt$x" },\n'
        '  { name = "vera", password_hash = "scrypt$y", role = "viewer" }]\n'
    )
    alice, vera = cloud_config.load(toml).dashboard.users
    assert (alice.role, vera.role) == ("operator", "viewer")
    legacy = Users({"alice": hash_password("pw", n=2**10)}).get("alice")  # a bare hash
    assert legacy is not None and legacy.role == "operator"
    toml.write_text('[dashboard]\nusers = [{ name = "x", password_hash = "h", role = "admin" }]\n')
    with pytest.raises(FleetsentryError, match="role"):
        cloud_config.load(toml)


def _score(ts: float, anomalous: bool, version: str = "v1") -> bytes:
    return encode(
        Score(
            event_id=f"e{ts}",
            ts=ts,
            stream="payments",
            token="card-token-1",
            score=2.0 if anomalous else 0.1,
            threshold=1.0,
            model_version=version,
            anomalous=anomalous,
        )
    )


class _NoRegistry(Registry):
    """A registry of no streams, never started (constructing one does no I/O)."""

    def __init__(self) -> None:
        super().__init__(Path("no-registry"))

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
    view = fleet(live, _NoRegistry(), now)
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

    def status(version: str, state: ModelState, ts: float) -> bytes:
        return encode(
            ModelStatus(edge_id="edge-1", stream="payments", version=version, state=state, ts=ts)
        )

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


class _NoModels(_NoRegistry):
    def champion(self, stream: str) -> None:
        return None

    def find(self, version: str) -> None:
        return None


def _fed(
    first: float,
    last: float,
    every: float = 1.0,
    skip: tuple[float, float] = (0, 0),
    window_s: float = 3600,
) -> LiveState:
    """Payments scored one per ``every`` seconds over [first, last], none inside ``skip``."""
    live = LiveState(bucket_s=10, window_s=window_s, offline_after_s=30)
    ts = first
    while ts <= last:
        if not skip[0] <= ts < skip[1]:
            live.on_record("edge-1.scores.payments", _score(ts, False), ts)
        ts += every
    return live


def test_charts_fit_the_data_not_a_fixed_hour_and_the_window_can_be_chosen() -> None:
    # Ten minutes of data, looked at 2 s after the newest event arrived.
    live = _fed(9_400.5, 10_000.5)
    now = 10_002.5
    fit = detection(live, _NoModels(), now)
    t = fit["rates"]["t"]
    assert (t[0], t[-1], len(t)) == (9_400.0, 10_000.0, 61)  # not 361 buckets of an hour
    assert fit["decisions"]["t"] == t and fit["alerts_by_kind"]["t"] == t
    assert fit["window"] == {
        "fit": True,
        "seconds": None,
        "bucket_s": 10,
        "start": 9_400.0,
        "end": 10_000.5,
    }
    gw = gateway(live, _NoModels(), "edge-1", now)
    assert gw is not None and gw["series"]["t"] == t

    five = detection(live, _NoModels(), now, window_s=300)
    assert (five["rates"]["t"][0], five["rates"]["t"][-1]) == (9_700.0, 10_000.0)
    hour = detection(live, _NoModels(), now, window_s=3600)
    rates = hour["rates"]["events"]["payments"]
    assert hour["rates"]["t"][0] == 6_400.0 and len(rates) == 361
    assert rates[:300] == [0.0] * 300 and rates[301:-1] == [1.0] * 59  # before the data: none


def test_the_bucket_still_filling_is_a_rate_over_its_elapsed_part_never_a_zero() -> None:
    # 1 event/s; the newest at 10_006.5, 6.5 s into its bucket, arrived 1.5 s ago.
    live = _fed(9_400.5, 10_006.5)
    rates = detection(live, _NoModels(), 10_008.0)["rates"]
    payments = rates["events"]["payments"]
    assert rates["t"][-1] == 10_000.0
    assert payments[:-1] == [1.0] * 60  # whole buckets
    assert 0.9 < payments[-1] < 1.2  # 7 events in 6.5 s, not 7 in 10 (0.7)

    # The cloud's clock already in the next bucket, the newest event not: the chart ends at
    # the newest event's bucket, not at an empty one read as zero.
    live = _fed(9_400.5, 10_009.5)
    rates = detection(live, _NoModels(), 10_011.0)["rates"]
    assert rates["t"][-1] == 10_000.0 and 0.9 < rates["events"]["payments"][-1] < 1.2

    # Less than half the bucket passed: too little to tell, so a gap (None), not a zero.
    live = _fed(9_400.5, 10_002.5)
    det = detection(live, _NoModels(), 10_003.0)
    assert det["rates"]["events"]["payments"][-1] is None
    assert det["decisions"]["rates"]["approve"][-1] is None
    assert det["rates"]["events"]["payments"][-2] == 1.0


def test_a_silence_inside_the_range_reads_zero() -> None:
    live = _fed(9_400.5, 10_005.5, skip=(9_600, 9_700))
    payments = detection(live, _NoModels(), 10_006.0)["rates"]["events"]["payments"]
    assert payments[20:30] == [0.0] * 10  # 9_600 .. 9_690: nothing arrived, a true zero
    assert payments[19] == payments[30] == 1.0 and None not in payments[:-1]


def test_a_device_clock_ahead_does_not_drag_the_charts_forward() -> None:
    live = _fed(9_400.5, 10_000.5)
    live.on_record("edge-1.scores.payments", _score(10_300.0, False), 10_001.0)
    t = detection(live, _NoModels(), 10_001.0)["rates"]["t"]
    assert t[-1] == 10_000.0  # the cloud's now, not the device's 10_300


def test_with_no_data_fitting_shows_nothing_and_a_fixed_window_shows_zeros() -> None:
    live = LiveState(bucket_s=10, window_s=3600)
    fit = detection(live, _NoModels(), 10_000.0)
    assert fit["rates"]["t"] == [] and fit["decisions"]["rates"] == {"approve": [], "decline": []}
    five = detection(live, _NoModels(), 10_009.0, window_s=300)
    assert len(five["decisions"]["t"]) == 31
    assert five["decisions"]["rates"]["approve"][:-1] == [0.0] * 30


def test_a_window_is_fit_all_or_whole_seconds_within_what_is_kept() -> None:
    live = LiveState(bucket_s=10, window_s=3600)
    assert chart_window(None, live) is None and chart_window("fit", live) is None
    assert chart_window("all", live) == 3600 and chart_window("900", live) == 900
    for bad in ("", "abc", "0", "5", "7200", "-300", "900.0", "1e3", " 900", "²", "9" * 50):
        with pytest.raises(BadQuery, match="window must be 'fit', 'all' or a whole number of"):
            chart_window(bad, live)
    labels = [(c["label"], c["current"]) for c in window_choices(live, 900)]
    assert labels == [
        ("fit to data", False),
        ("5 min", False),
        ("15 min", True),
        ("all kept (1 h)", False),
    ]
    assert window_choices(live, 600)[-1] == {"value": "600", "label": "10 min", "current": True}
    assert window_choices(live, 3600)[-1]["current"]  # "all"
