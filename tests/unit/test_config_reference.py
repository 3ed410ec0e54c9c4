"""docs/configuration.md is what `python -m shared.config_reference` makes of the config structs,
and every setting in them says what it is for."""

from __future__ import annotations

import importlib
from pathlib import Path

from msgspec import inspect as mi

from shared import config_reference

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "configuration.md"


def test_the_committed_page_is_the_generated_one() -> None:
    assert PAGE.read_text() == config_reference.reference(), (
        "docs/configuration.md differs from the config structs: run `make docs` and commit it"
    )


def _structs(info: mi.Type) -> list[mi.StructType]:
    if isinstance(info, mi.ListType):
        return _structs(info.item_type)
    if not isinstance(info, mi.StructType):
        return []
    found = [info]
    for field in info.fields:
        found += _structs(field.type)
    return found


def test_every_setting_has_a_description() -> None:
    missing = []
    for _, module, root in config_reference.FILES:
        for info in _structs(mi.type_info(getattr(importlib.import_module(module), root))):
            comments = config_reference.field_comments(info.cls)
            missing += [
                f"{info.cls.__module__}.{info.cls.__name__}.{f.name}"
                for f in info.fields
                if f.name not in comments and not isinstance(f.type, mi.StructType)
            ]
    assert not missing, "write a comment above each of these settings: " + ", ".join(missing)


def test_defaults_under_the_home_directory_are_written_with_a_tilde() -> None:
    assert config_reference.default_text(Path.home() / "x") == '`"~/x"`'
    assert config_reference.default_text(Path("/var/lib/x")) == '`"/var/lib/x"`'
