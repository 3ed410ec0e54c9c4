"""The shipped baseline verifies with its own key even where the fleet signs with another."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edge.scorer.errors import ModelError
from edge.scorer.model_runner import baseline_dir, load_model
from shared.signing import generate_private_key, write_public_key


def test_baseline_loads_under_a_fleet_key_but_a_copy_does_not(tmp_path: Path) -> None:
    fleet_pub = tmp_path / "fleet.pub"
    write_public_key(generate_private_key(), fleet_pub)
    model = load_model(baseline_dir("payments"), "payments", fleet_pub)
    assert model.manifest.stream == "payments"
    # The same bytes outside the package are judged by the fleet's key, and fail it.
    copy = tmp_path / "payments"
    shutil.copytree(baseline_dir("payments"), copy)
    with pytest.raises(ModelError, match="refusing model"):
        load_model(copy, "payments", fleet_pub)
