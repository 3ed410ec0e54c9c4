"""Free ports come from FLEETSENTRY_PORT_RANGE when set (parallel test workers), and a bad
value names the variable."""

from __future__ import annotations

import pytest

from shared.infra.ports import RANGE_ENV, free_ports, port_range


def test_ports_come_from_the_configured_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RANGE_ENV, "23000-23050")
    assert port_range() == (23000, 23050)
    ports = free_ports(5)
    assert len(set(ports)) == 5 and all(23000 <= p < 23050 for p in ports)
    monkeypatch.delenv(RANGE_ENV)
    assert port_range() == (20000, 32000)


@pytest.mark.parametrize("value", ["20000", "a-b", "30000-20000", "80-90"])
def test_a_bad_range_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(RANGE_ENV, value)
    with pytest.raises(ValueError, match=RANGE_ENV):
        port_range()
