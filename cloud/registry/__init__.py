"""The model registry: every model version per stream and every training run, in SQLite.

See :mod:`cloud.registry.registry` for the schema (the dashboard reads the same tables).
"""

from cloud.registry.errors import RegistryError
from cloud.registry.registry import ModelRecord, Registry, RunRecord, TrainerStatus

__all__ = ["ModelRecord", "Registry", "RegistryError", "RunRecord", "TrainerStatus"]
