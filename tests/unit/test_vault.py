"""The PII vault: encryption at rest, one row per value, erasure, retention, audit, CLI."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.vault import UnknownToken, Vault, VaultError
from shared.tokens import Tokenizer

TOK = Tokenizer(b"unit-test-fleet-secret")
PII = {
    ("vin", "1HGCM82633A004352", None),
    ("driver", "D-0042", "D-0042"),
    ("driver_name", "Ada Lovelace", "D-0042"),
    ("card", "4111111111111111", "D-0042"),
    ("cardholder", "ADA LOVELACE", "D-0042"),
    ("driver", "D-0099", "D-0099"),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def open_vault(tmp_path: Path, clock: Clock | None = None) -> Vault:
    return Vault(tmp_path / "v.sqlite", tmp_path / "vault.key", TOK, clock=clock or Clock()).start()


def test_roundtrip_and_one_row_per_value(tmp_path: Path) -> None:
    with open_vault(tmp_path) as v:
        tokens = {value: v.put(kind, value, person) for kind, value, person in PII}
        for _ in range(3):
            v.put_many(list(PII))
        assert v.count() == len(PII)
        for value, token in tokens.items():
            assert token == TOK.token(next(k for k, x, _ in PII if x == value), value)
            assert v.reveal(token, "alice") == value


def test_database_holds_no_plaintext(tmp_path: Path) -> None:
    with open_vault(tmp_path) as v:
        v.put_many(list(PII))
        v.erase_person("D-0099")
    blobs = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("v.sqlite"))
    assert blobs
    for _, value, _ in PII:
        assert value.encode() not in blobs, value


def test_key_file_is_private_and_required(tmp_path: Path) -> None:
    with open_vault(tmp_path) as v:
        token = v.put("vin", "1HGCM82633A004352", None)
    mode = stat.S_IMODE((tmp_path / "vault.key").stat().st_mode)
    assert mode == 0o600
    (tmp_path / "vault.key").unlink()
    with open_vault(tmp_path) as v:  # a new master key cannot unwrap the old data keys
        with pytest.raises(VaultError, match="restore the key file"):
            v.reveal(token, "bob")
    os.chmod(tmp_path / "vault.key", 0o644)
    with pytest.raises(VaultError, match="chmod 600"):
        open_vault(tmp_path)


def test_erase_person_shreds_only_their_values(tmp_path: Path) -> None:
    with open_vault(tmp_path) as v:
        v.put_many(list(PII))
        card = TOK.token("card", "4111111111111111")
        other = TOK.token("driver", "D-0099")
        vin = TOK.token("vin", "1HGCM82633A004352")
        assert v.erase_person("D-0042", actor="dpo") == 4
        with pytest.raises(UnknownToken):
            v.reveal(card, "alice")
        assert v.reveal(other, "alice") == "D-0099"
        assert v.reveal(vin, "alice") == "1HGCM82633A004352"
        person = v.person_token("D-0042")
        assert not list(v.db.query("SELECT * FROM keys WHERE person = ?", [person]))
        log = v.audit_log()
        assert log[-1]["action"] == "erase" and log[-1]["actor"] == "dpo"
        assert any(e["outcome"] == "unknown" and e["token"] == card for e in log)


def test_retention_purges_values_not_seen(tmp_path: Path) -> None:
    clock = Clock()
    with open_vault(tmp_path, clock) as v:
        v.put("driver", "D-old", "D-old")
        clock.now += 10 * 86_400
        v.put("driver", "D-new", "D-new")
        assert v.purge_older_than(5) == 1
        assert v.reveal(TOK.token("driver", "D-new"), "a") == "D-new"
        with pytest.raises(UnknownToken):
            v.reveal(TOK.token("driver", "D-old"), "a")
        # A value used again after the touch interval stays fresh.
        clock.now += 2 * 3600
        v.put("driver", "D-new", "D-new")
        clock.now += 4 * 86_400
        assert v.purge_older_than(5) == 0


def test_reveal_is_audited_with_actor(tmp_path: Path) -> None:
    with open_vault(tmp_path) as v:
        token = v.put("card", "4111111111111111", "D-1")
        v.reveal(token, "investigator-7")
        with pytest.raises(VaultError):
            v.reveal(token, " ")
        entry = v.audit_log(1)[0]
        assert (entry["actor"], entry["action"], entry["token"], entry["outcome"]) == (
            "investigator-7",
            "reveal",
            token,
            "revealed",
        )
        assert "4111" not in repr(v.audit_log())


def test_cli_reveal_erase_purge(tmp_path: Path) -> None:
    from edge.cli import edge

    conf = tmp_path / "edge.toml"
    conf.write_text(f'data_dir = "{tmp_path}"\n')
    from edge import config as edge_config
    from edge.vault.setup import open_vault as open_from_config

    with open_from_config(edge_config.load(conf)) as v:
        token = v.put("driver", "D-7", "D-7")
    runner = CliRunner()
    out = runner.invoke(edge, ["vault", "reveal", token, "--actor", "ops", "--config", str(conf)])
    assert out.exit_code == 0 and out.output.strip() == "D-7"
    out = runner.invoke(edge, ["vault", "erase", "--person", "D-7", "--config", str(conf)])
    assert out.exit_code == 0 and "erased 1" in out.output
    out = runner.invoke(edge, ["vault", "reveal", token, "--actor", "ops", "--config", str(conf)])
    assert out.exit_code != 0 and "erased" in out.output
    out = runner.invoke(edge, ["vault", "purge", "--older-than-days", "1", "--config", str(conf)])
    assert out.exit_code == 0 and "purged 0" in out.output
    out = runner.invoke(edge, ["vault", "audit", "--config", str(conf)])
    assert '"actor": "ops"' in out.output


def test_expiry_deletes_the_oldest_values_a_bounded_number_at_a_time(tmp_path: Path) -> None:
    clock = Clock()
    with open_vault(tmp_path, clock) as v:
        for i in range(5):
            v.put("card", f"41111111111111{i:02d}", f"D-{i}")
        clock.now += 2 * 3600
        v.put("driver", "D-new", "D-new")
        assert v.expire(days=1 / 24, limit=3) == 3
        assert v.expire(days=1 / 24, limit=3) == 2
        assert v.expire(days=1 / 24, limit=3) == 0
        assert v.count() == 1
        # The people whose last value went keep no key; the fresh one keeps its own.
        persons = {r["person"] for r in v.db.query("SELECT person FROM keys")}
        assert persons == {v.person_token("D-new")}
        # A value seen again after it expired is stored again (not skipped as recently seen).
        v.put("card", "4111111111111100", "D-0")
        assert v.count() == 2


def test_a_gateway_whose_fleet_secret_changed_refuses_to_open_its_vault(tmp_path: Path) -> None:
    # A lost fleet secret file is made afresh, at random, at the next start: every vehicle,
    # driver and card would get new tokens, splitting their history from the rest of the fleet,
    # and the vault could no longer reverse them. The services open the vault with the
    # secret at start-up; the vault knows its secret by a fingerprint and refuses another.
    from edge import config as edge_config
    from edge.vault.setup import open_vault, secret_file
    from shared.config import convert

    cfg = convert({"edge_id": "gw", "data_dir": str(tmp_path)}, edge_config.EdgeConfig)
    with open_vault(cfg) as v:
        token = v.put("vin", "1HGCM82633A004352", None)
    secret = secret_file(cfg)
    kept = secret.read_bytes()
    secret.unlink()
    with pytest.raises(VaultError) as refused:
        open_vault(cfg)
    message = str(refused.value)
    assert "vault.fleet_secret_file" in message and str(secret) in message
    assert kept.strip().decode() not in message  # the secret itself is never printed
    # Another secret written there is refused too; the fleet's own opens the vault again.
    secret.unlink()
    secret.write_bytes(kept)
    secret.chmod(0o600)
    with open_vault(cfg) as v:
        assert v.reveal(token, actor="test") == "1HGCM82633A004352"
    # A vault opened without the secret (reveal and erase need none) is not checked.
    with Vault(tmp_path / "vault.sqlite", tmp_path / "vault.key") as v:
        assert v.reveal(token, actor="test") == "1HGCM82633A004352"
