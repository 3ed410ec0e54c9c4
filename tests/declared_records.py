"""Synthetic anon records of a declared stream for the scorer's tests: a refrigerated
trailer (``reefer``) whose device ids are plain unit numbers (``RT-0001``), not personal data.

The declaration is written to a test's directory and registered for the test's duration only,
as ``use_declarations`` does at a service's start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from shared import streams
from shared.contracts import AnonRecord, encode
from shared.declarations.schema import Stream
from tests.scorer_models import SyntheticFeatures

REEFER = "reefer"


def reefer_toml(
    alerts: str = 'kind = "episodes", open_events = 4, window_s = 10, quiet_s = 5',
) -> str:
    return f"""
[stream]
name = "reefer"
device = {{ field = "unit", pattern = "^[A-Z0-9-]{{4,32}}$", noun = "trailer" }}
time = {{ field = "t", unit = "ms" }}
alerts = {{ {alerts} }}
cell = ["lat", "lon"]
person = "driver"

[fields]
unit = {{ type = "str", label = "Refrigeration unit" }}
t = {{ type = "int", unit = "ms", label = "Device time" }}
box_temp_c = {{ type = "float", unit = "°C", range = [-40, 40], label = "Box temperature", typical_std = 2.0 }}
setpoint_c = {{ type = "float", unit = "°C", label = "Setpoint" }}
door = {{ type = "enum", values = ["closed", "open"], label = "Door" }}
compressor_kw = {{ type = "float", unit = "kW", range = [0, 20], label = "Compressor power" }}
model = {{ type = "str", label = "Trailer model" }}
driver = {{ type = "str", pii = "token", label = "Driver" }}
lat = {{ type = "float", range = [-90, 90] }}
lon = {{ type = "float", range = [-180, 180] }}

[refs]
rated_kw = {{ "RT-200" = 4.5, "RT-400" = 7.0 }}

[features]
box_temp_c = ["value", "zscore", "rate", "stuck"]
box_over_setpoint = {{ diff = ["box_temp_c", "setpoint_c"], then = ["value", "zscore"] }}
door = ["onehot"]
compressor_load = {{ ref_ratio = "compressor_kw", by = "model", table = "rated_kw" }}
gap_s = {{ gap = true, scale = "log1p" }}
hour = "time_of_day"
"""


def write_reefer(directory: Path, **kwargs: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "reefer.toml"
    path.write_text(reefer_toml(**kwargs))
    return directory


@contextmanager
def declared(directory: Path) -> Iterator[dict[str, Stream]]:
    """Register the declarations of ``directory`` (name -> Stream); unregister them after."""
    before = {s.name for s in streams.all_streams()}
    specs = streams.use_declarations(directory)
    try:
        yield {s.name: s.declaration for s in specs if s.declaration is not None}
    finally:
        for spec in streams.all_streams():
            if spec.name not in before:
                streams._REGISTRY.pop(spec.name, None)


def reefer_records(
    data: SyntheticFeatures,
    run_id: str,
    device: str,
    start: float,
    n: int,
    anomalous: range = range(0),
    seed: int = 0,
) -> list[AnonRecord]:
    """AnonRecords of one trailer, one a second, as the enricher writes them to anon.reefer."""
    rows = data.typical(n, seed=seed)
    odd = data.anomalous(n, seed=seed + 1)
    out = []
    for i in range(n):
        row = odd[i] if i in anomalous else rows[i]
        out.append(
            AnonRecord(
                event_id=f"{run_id}-{device}-{i}",
                ts=start + i,
                stream=REEFER,
                device=device,
                key=device,
                tokens={"driver_token": "drivertoken01"},
                cell="c10:523:134",
                values={"box_temp_c": 3.5, "door": "closed", "model": "RT-200"},
                features={k: float(v) for k, v in data.as_dict(np.asarray(row)).items()},
            )
        )
    return out


def as_messages(records: list[AnonRecord]) -> list[tuple[bytes, bytes]]:
    return [(r.key.encode(), encode(r)) for r in records]
