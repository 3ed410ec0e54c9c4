"""The demo's fleet secret: one for both gateways, the same for the same ``--seed``."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

from edge.vault.keyfile import load_or_create
from shared.demo import _fleet_secret


def test_one_seed_one_secret_readable_by_its_owner_only(tmp_path: Path) -> None:
    a = _fleet_secret(tmp_path / "a", seed=1)
    again = _fleet_secret(tmp_path / "a", seed=1)
    b = _fleet_secret(tmp_path / "b", seed=1)
    other = _fleet_secret(tmp_path / "c", seed=2)
    assert a == again and a.read_bytes() == b.read_bytes() != other.read_bytes()
    assert stat.S_IMODE(a.stat().st_mode) == 0o600
    # What a gateway's vault reads: base64 of 32 bytes.
    assert load_or_create(a, create=False) == base64.b64decode(a.read_bytes())
    assert len(load_or_create(a, create=False)) == 32


def test_another_seed_replaces_the_secret(tmp_path: Path) -> None:
    first = _fleet_secret(tmp_path, seed=1).read_bytes()
    assert _fleet_secret(tmp_path, seed=7).read_bytes() != first


def test_another_seed_starts_the_demo_gateways_vaults_afresh(tmp_path: Path) -> None:
    # A vault remembers the secret it was filled under and refuses another; the demo's
    # gateways, under another seed's secret, start with new vaults instead of not at all.
    from edge import config as edge_config
    from edge.vault.setup import open_vault
    from shared.config import convert

    secret = _fleet_secret(tmp_path, seed=1)
    cfg = convert(
        {
            "edge_id": "edge-1",
            "data_dir": str(tmp_path / "edge-1"),
            "vault": {"fleet_secret_file": str(secret)},
        },
        edge_config.EdgeConfig,
    )
    with open_vault(cfg) as v:
        v.put("vin", "1HGCM82633A004352", None)
    _fleet_secret(tmp_path, seed=1)  # the same seed keeps the vault
    with open_vault(cfg) as v:
        assert v.db["pii"].count == 1
    _fleet_secret(tmp_path, seed=7)
    with open_vault(cfg) as v:
        assert v.db["pii"].count == 0
