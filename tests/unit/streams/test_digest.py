"""The feature-spec digest: cosmetic edits keep it, any change to a feature's value or place
changes it."""

from __future__ import annotations

import re

import pytest

from shared.declarations import load_text

BASE = """
[stream]
name = "tanker"
device = { field = "unit", pattern = "^[A-Z0-9-]{4,32}$", noun = "tanker" }
time = { field = "t", unit = "s" }
alerts = { kind = "episodes" }

[fields]
unit = { type = "str", label = "Tanker" }
t = { type = "float" }
model = { type = "str" }
level_pct = { type = "float", unit = "%", range = [0, 100], label = "Tank level", typical_std = 5.0 }
pressure_kpa = { type = "float", unit = "kPa", label = "Tank pressure" }
valve = { type = "enum", values = ["shut", "open"] }

[refs]
rated_kpa = { a = 300.0, b = 350.0 }

[features]
level_pct = ["value", "zscore", "rate"]
pressure_kpa = ["value", "delta", "stuck"]
pressure_vs_rated = { ref_ratio = "pressure_kpa", by = "model", table = "rated_kpa", label = "Pressure vs rated" }
level_per_kpa = { ratio = ["level_pct", "pressure_kpa"], then = ["value", "rate"] }
valve = ["onehot"]
gap_s = { gap = true, scale = "log1p" }
hour = "time_of_day"
"""


def _digest(text: str) -> str:
    return load_text(text, "tanker.toml").feature_spec


BASE_DIGEST = _digest(BASE)


def test_the_digest_is_a_short_stable_version_string() -> None:
    assert re.fullmatch(r"fs-[0-9a-f]{12}", BASE_DIGEST)
    assert _digest(BASE) == BASE_DIGEST


SAME = [
    # Labels, units, nouns: cosmetic.
    ('label = "Tank level"', 'label = "Fill level"'),
    ('label = "Pressure vs rated"', 'label = "Pressure against the rated one"'),
    ('unit = "kPa", ', 'unit = "bar", '),
    ('noun = "tanker"', 'noun = "truck"'),
    ("[features]", "[features]\n# a comment"),
    # Not about feature values: alerts, decisions, topic, personal data of unused fields.
    ('alerts = { kind = "episodes" }', 'alerts = { kind = "event" }\ndecision = true'),
    ('name = "tanker"', 'name = "tanker"\ntopic = "tank"'),
    ('t = { type = "float" }', 't = { type = "float" }\ndriver = { type = "str", pii = "token" }'),
    ('pressure_kpa = { type = "float"', 'pressure_kpa = { required = false, type = "float"'),
    # Field declaration order (feature order is what counts).
    (
        'model = { type = "str" }\nlevel_pct = { type = "float", unit = "%", range = [0, 100], '
        'label = "Tank level", typical_std = 5.0 }',
        'level_pct = { type = "float", unit = "%", range = [0, 100], label = "Tank level", '
        'typical_std = 5.0 }\nmodel = { type = "str" }',
    ),
    # The short form, and the table form with every default written out.
    (
        'level_pct = ["value", "zscore", "rate"]',
        'level_pct = ["value"]\nlevel_pct_z = { zscore = "level_pct", alpha = 0.05, limit = 20, '
        "floor = 0.05, typical_std = 5.0 }\n"
        'level_pct_rate = { rate = "level_pct", limit = 50, min_dt_s = 0.5 }',
    ),
]


@pytest.mark.parametrize(("old", "new"), SAME)
def test_cosmetic_edits_keep_the_digest(old: str, new: str) -> None:
    assert old in BASE
    text = BASE.replace(old, new, 1)
    assert _digest(text) == BASE_DIGEST


CHANGED = [
    # Inputs.
    ('ratio = ["level_pct", "pressure_kpa"]', 'ratio = ["pressure_kpa", "level_pct"]'),
    ('ref_ratio = "pressure_kpa", by = "model"', 'ref_ratio = "level_pct", by = "model"'),
    ('device = { field = "unit"', 'device = { field = "model"'),
    # Transforms.
    ('["value", "delta", "stuck"]', '["value", "rate", "stuck"]'),
    ('then = ["value", "rate"]', 'then = ["value", "zscore"]'),
    ('{ ratio = ["level_pct"', '{ diff = ["level_pct"'),
    # Parameters, explicit or from the field.
    ('scale = "log1p" }', 'scale = "linear" }'),
    ("gap_s = { gap = true", "gap_s = { cap = 600, gap = true"),
    ('table = "rated_kpa",', 'table = "rated_kpa", missing = 1.0,'),
    ("range = [0, 100]", "range = [0, 110]"),
    ("typical_std = 5.0", "typical_std = 4.0"),
    ('values = ["shut", "open"]', 'values = ["open", "shut"]'),
    ("a = 300.0", "a = 310.0"),
    ("b = 350.0 }", "b = 350.0, c = 1.0 }"),
    # Order and names.
    (
        'valve = ["onehot"]\ngap_s = { gap = true, scale = "log1p" }',
        'gap_s = { gap = true, scale = "log1p" }\nvalve = ["onehot"]',
    ),
    ('["value", "zscore", "rate"]', '["value", "rate", "zscore"]'),
    ('hour = "time_of_day"', 'time = "time_of_day"'),
    ('hour = "time_of_day"\n', ""),
]


@pytest.mark.parametrize(("old", "new"), CHANGED)
def test_feature_changes_change_the_digest(old: str, new: str) -> None:
    assert old in BASE
    assert _digest(BASE.replace(old, new, 1)) != BASE_DIGEST


def test_a_named_transforms_version_enters_the_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.declarations import named

    text = BASE.replace("[features]", '[features]\nfrom_code = { named = "tyre_min_dev" }')
    text = text.replace(
        "[fields]",
        "[fields]\n"
        + "\n".join(f'tyre_{w}_kpa = {{ type = "float" }}' for w in ("fl", "fr", "rl", "rr")),
    )
    before = _digest(text)
    entry = named.get("tyre_min_dev")
    assert entry is not None
    monkeypatch.setitem(
        named._REGISTRY,
        "tyre_min_dev",
        named.NamedTransform(
            entry.name, entry.reads, entry.compute, entry.output, version=entry.version + 1
        ),
    )
    assert _digest(text) != before
