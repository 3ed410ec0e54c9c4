"""The generator without a broker: determinism, contracts, ground truth and its rates."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import firmware_sim as fs
import msgspec
import pytest
from click.testing import CliRunner
from firmware_sim.cli import sim
from firmware_sim.ids import is_luhn_valid, is_valid_vin, luhn_check_digit, vin_check_digit

from shared.contracts import Label, Payment, Telemetry, decode
from shared.fleet_catalog import CATALOG
from shared.streams import PAYMENTS, TELEMETRY

# Rates far above the defaults so a short run holds enough episodes to test them.
FAULT_RATE = 3.0  # per driving vehicle-hour, per kind
FRAUD_RATE = 0.07  # per legitimate payment, per kind


Run = tuple[fs.Fleet, list[fs.Emitted]]


@pytest.fixture(scope="module")
def run() -> Run:
    settings = fs.SimSettings(
        vehicles=60,
        duration_s=1200,
        seed=11,
        payment_rate=4.0,
        fault_rates={k: FAULT_RATE for k in fs.FAULT_KINDS},
        fraud_rates={k: FRAUD_RATE for k in fs.FRAUD_KINDS},
    )
    fleet = fs.Fleet(settings)
    return fleet, list(fleet.records())


def test_known_vin_and_card_check_digits() -> None:
    assert vin_check_digit("1M8GDM9AXKP042788") == "X"
    assert is_valid_vin("1M8GDM9AXKP042788")
    assert not is_valid_vin("1M8GDM9A1KP042788")
    assert luhn_check_digit("411111111111111") == "1"
    assert is_luhn_valid("4111111111111111") and not is_luhn_valid("4111111111111112")


def test_every_event_matches_its_contract_and_topic(run: Run) -> None:
    _, records = run
    vins = set()
    for rec in records:
        _, vin, suffix = rec.topic.split("/")
        assert suffix in (TELEMETRY.mqtt_suffix, PAYMENTS.mqtt_suffix)
        event: Telemetry | Payment = (
            decode(Telemetry, rec.payload)
            if suffix == "telemetry"
            else decode(Payment, rec.payload)
        )
        assert event.vin == vin
        assert is_valid_vin(vin)
        if isinstance(event, Payment):
            assert is_luhn_valid(event.card_number)
        vins.add(vin)
    assert len(vins) == 60
    ids = [msgspec.json.decode(r.payload)["event_id"] for r in records]
    assert len(ids) == len(set(ids)), "event ids must be unique"


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def digest(seed: int) -> tuple[list[tuple[str, bytes]], list[Label]]:
        fleet = fs.Fleet(
            fs.SimSettings(
                vehicles=15, duration_s=120, seed=seed, fault_rates={k: 5.0 for k in fs.FAULT_KINDS}
            )
        )
        return list(fleet.events()), fleet.labels

    a, b, c = digest(3), digest(3), digest(4)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[0] != c[0]


def test_dry_run_files_are_byte_identical(tmp_path: Path) -> None:
    cli = CliRunner()
    args = [
        "run",
        "--dry-run",
        "--vehicles",
        "10",
        "--duration",
        "90",
        "--seed",
        "9",
        "--fault-scale",
        "20",
    ]
    for name in ("a", "b", "c"):
        seed = ["--seed", "10"] if name == "c" else []
        res = cli.invoke(
            sim,
            [
                *args,
                *seed,
                "--out",
                str(tmp_path / f"{name}.jsonl"),
                "--labels-out",
                str(tmp_path / f"{name}-labels.jsonl"),
            ],
        )
        assert res.exit_code == 0, res.output
    read = lambda n: (tmp_path / n).read_bytes()  # noqa: E731
    assert read("a.jsonl") == read("b.jsonl")
    assert read("a-labels.jsonl") == read("b-labels.jsonl")
    assert read("a.jsonl") != read("c.jsonl")
    first = msgspec.json.decode(read("a.jsonl").splitlines()[0])
    assert set(first) == {"topic", "payload"}
    decode(Telemetry, msgspec.json.encode(first["payload"]))
    for line in read("a-labels.jsonl").splitlines():
        decode(Label, line)
    assert read("a-labels.jsonl"), "fault scale 20 must inject something in 90 s"


def test_no_label_leaks_into_payloads(run: Run) -> None:
    _, records = run
    words = [*fs.FAULT_KINDS, *fs.FRAUD_KINDS, "episode", "label", "fraud", "fault"]
    for rec in records:
        low = rec.payload.lower()
        for w in words:
            assert w.encode() not in low, (w, rec.payload)
    fields = set(Telemetry.__struct_fields__) | set(Payment.__struct_fields__)
    assert not fields & {"kind", "episode_id", "label", "start_ts", "end_ts"}


def test_labels_match_emitted_events(run: Run) -> None:
    fleet, records = run
    labelled = {r.label.event_id: r for r in records if r.label is not None}
    assert {lab.event_id for lab in fleet.labels} == set(labelled)
    for lab in fleet.labels:
        rec = labelled[lab.event_id]
        ts = msgspec.json.decode(rec.payload)["ts"]
        assert lab.start_ts <= ts <= lab.end_ts + 1e-6
        assert lab.stream == ("telemetry" if rec.topic.endswith("telemetry") else "payments")


def _within(observed: int, expected: float) -> bool:
    return abs(observed - expected) <= 4 * math.sqrt(max(expected, 1.0)) + 2


def test_fault_and_fraud_rates_match_settings(run: Run) -> None:
    fleet, _ = run
    st = fleet.stats
    hours = st.healthy_driving_s / 3600
    for kind in fs.FAULT_KINDS:
        expected = FAULT_RATE * hours
        assert expected > 12
        assert _within(st.faults[kind], expected), (kind, st.faults[kind], expected)
    episodes = {lab.episode_id for lab in fleet.labels}
    injected = sum(st.faults.values()) + sum(st.frauds.values())
    # A fraud planned just before the end may have no event inside the run.
    assert injected - 3 <= len(episodes) <= injected
    for kind in fs.FRAUD_KINDS:
        # The cumulative draw gives each kind its own probability per opportunity.
        expected = FRAUD_RATE * st.fraud_opportunities[kind]
        assert expected > 5
        assert _within(st.frauds[kind], expected), (kind, st.frauds[kind], expected)


def _telemetry_by_episode(records: list[fs.Emitted]) -> dict[str, list[tuple[Telemetry, Label]]]:
    out: dict[str, list] = defaultdict(list)
    for r in records:
        if r.label is not None and r.label.stream == "telemetry":
            out[r.label.episode_id].append((decode(Telemetry, r.payload), r.label))
    return out


def _abnormal(t: Telemetry) -> bool:
    """Far outside what a healthy vehicle of this model reads, on some sensor."""
    m = CATALOG[t.model]
    tyres = (t.tyre_fl_kpa, t.tyre_fr_kpa, t.tyre_rl_kpa, t.tyre_rr_kpa)
    return (
        t.coolant_c > m.thermostat_c + 12
        or t.coolant_c < -30
        or t.intake_c > t.ambient_c + 40
        or t.intake_c < -30
        or min(tyres) < m.tyre_kpa * 0.85
        or max(tyres) > m.tyre_kpa * 1.5
        or t.battery_v < 13.0
        and t.rpm > 0
        or t.battery_v > 17
        or t.battery_v < 5
        or t.rpm > m.ranges["rpm"][1] * 1.1
        or t.speed_kmh > 130
        or t.oil_kpa > 600
    )


def test_every_fault_turns_clearly_abnormal_within_60s(run: Run) -> None:
    _, records = run
    episodes = _telemetry_by_episode(records)
    assert len(episodes) > 50
    late = []
    for eid, frames in episodes.items():
        start = frames[0][1].start_ts
        early = [t for t, _ in frames if t.ts <= start + 45]
        if frames[-1][0].ts < start + 45 and not any(_abnormal(t) for t, _ in frames):
            late.append((eid, frames[0][1].kind))
        elif not any(_abnormal(t) for t in early):
            late.append((eid, frames[0][1].kind))
    assert len(late) <= 0.03 * len(episodes), late


def test_healthy_telemetry_stays_in_plausible_ranges(run: Run) -> None:
    _, records = run
    bad: Counter[str] = Counter()
    n = 0
    for r in records:
        if r.label is None and r.topic.endswith("telemetry"):
            t = decode(Telemetry, r.payload)
            n += 1
            if _abnormal(t):
                bad[t.model] += 1
            assert 0 <= t.speed_kmh < 130 and 0 <= t.fuel_pct <= 100 and 0 <= t.soc_pct <= 100
    assert sum(bad.values()) <= 0.001 * n, bad


def test_fuel_payments_respect_the_tank_unless_fraud(run: Run) -> None:
    fleet, records = run
    by_vin = {v.vin: v for v in fleet.vehicles}
    over = 0
    for r in records:
        if not r.topic.endswith("payments"):
            continue
        p = decode(Payment, r.payload)
        if p.category == "fuel" and p.volume_l is not None:
            tank = by_vin[p.vin].model.tank_l
            if r.label is not None and r.label.kind == "fuel_over_capacity":
                assert p.volume_l > tank * 1.3
                over += 1
            elif r.label is None:
                assert p.volume_l <= tank
    assert over > 0


def test_a_refuel_fills_the_tank_over_the_stop(run: Run) -> None:
    """The pump delivers while the vehicle stands: the gauge climbs, it never jumps."""
    fleet, records = run
    last: dict[str, float] = {}
    biggest, rises = 0.0, 0
    for r in records:
        if r.topic.endswith("telemetry"):  # no fault touches the fuel gauge
            t = decode(Telemetry, r.payload)
            step = t.fuel_pct - last.get(t.vin, t.fuel_pct)
            biggest = max(biggest, step)
            rises += step > 0.05
            last[t.vin] = t.fuel_pct
    assert rises > 0, "no vehicle refuelled in the run"
    assert biggest < 2.0, f"the fuel level jumped by {biggest:.1f} % in one frame"


def test_drift_adds_a_new_model_and_rolls_out_firmware() -> None:
    base = fs.SimSettings(vehicles=20, duration_s=240, seed=5)
    drifted = fs.SimSettings(
        vehicles=20,
        duration_s=420,
        seed=5,
        drift=("new_model", "firmware_rollout"),
        drift_at_s=60,
        drift_fraction=0.5,
    )
    before = {decode(Telemetry, p).model for t, p in fs.generate(base) if "telemetry" in t}
    frames = [decode(Telemetry, p) for t, p in fs.generate(drifted) if "telemetry" in t]
    assert "vivaro-hybrid" not in before
    assert "vivaro-hybrid" in {t.model for t in frames}
    assert drifted.start_ts is not None  # the fixed default start
    late = {t.vin: t for t in frames if t.ts > drifted.start_ts + 60 + 300}
    updated = [
        t
        for t in late.values()
        if t.model != "vivaro-hybrid"
        and t.firmware.split(".")[0] != CATALOG[t.model].firmware.split(".")[0]
    ]
    assert 3 <= len(updated) <= 17, len(updated)  # about half of the 20


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(fs.settings.SimSettingsError, match="vehicles"):
        fs.SimSettings(vehicles=0)
    with pytest.raises(fs.settings.SimSettingsError, match="fault_rates.bogus"):
        fs.SimSettings(fault_rates={"bogus": 1.0})
    res = CliRunner().invoke(
        sim, ["run", "--dry-run", "--out", "/dev/null", "--fraud-rate", "nope=1"]
    )
    assert res.exit_code != 0 and "KIND=RATE" in res.output


def test_register_writes_every_vin_of_the_run(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        sim,
        [
            "register",
            "--mosquitto-home",
            str(tmp_path),
            "--vehicles",
            "7",
            "--seed",
            "3",
            "--drift",
            "new_model",
            "--password",
            "pw",
        ],
    )
    assert res.exit_code == 0, res.output
    users = [line.split(":")[0] for line in (tmp_path / "vehicles.passwd").read_text().splitlines()]
    fleet = fs.Fleet(fs.SimSettings(vehicles=7, seed=3, drift=("new_model",)))
    assert sorted(users) == sorted(v.vin for v in fleet.vehicles)
    assert len(users) == 7 + 3  # drift vehicles join later but need their login too
