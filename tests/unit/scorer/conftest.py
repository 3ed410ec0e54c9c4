"""Signed int8 test models, trained once per session with real TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scorer_models import SyntheticFeatures, build_model_dir


@pytest.fixture(scope="session")
def telemetry_data() -> SyntheticFeatures:
    return SyntheticFeatures("telemetry", seed=7)


@pytest.fixture(scope="session")
def telemetry_model(
    tmp_path_factory: pytest.TempPathFactory, telemetry_data: SyntheticFeatures
) -> tuple[Path, Path]:
    """(model_dir, public_key) of a small telemetry autoencoder."""
    return build_model_dir(
        tmp_path_factory.mktemp("models") / "telemetry", "telemetry", telemetry_data
    )
