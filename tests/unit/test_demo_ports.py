"""The demo test's port plan hands out no port twice.

A metrics port equal to a cloud broker's left gateway 2's agent unable to serve its metrics
(and so restarting for the whole demo): the plan checked its metrics ports were free, and
the ports free_ports had just picked are free again once it returns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.infra.ports import RANGE_ENV
from tests.demo_support import demo_ports


def test_no_port_of_the_demos_plan_is_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    # As dense as a parallel worker's 3,000-port slice, but one no worker picks from: the
    # plans bind their ports for a moment, which must not take one a worker just picked.
    monkeypatch.setenv(RANGE_ENV, "10000-13000")
    for _ in range(300):
        d = demo_ports()
        plan = [d.edge, d.ctrl, d.mqtt, d.edge + 200, d.ctrl + 200, d.mqtt + 1, d.dashboard]
        plan += [*d.cloud, *d.cloud_ctrl]
        plan += [d.metrics + i for i in range(8)] + [d.metrics + 100 + i for i in range(8)]
        assert len(set(plan)) == len(plan), sorted(plan)


def test_a_metrics_base_takes_no_planned_port_and_stays_in_its_slice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The small disk test's agent once found its metrics port taken: base + 3 was one of the
    # stack's ports, planned (so free to the eye) but bound only later.
    from tests.support import free_infra_settings, free_metrics_base, planned_ports

    monkeypatch.setenv(RANGE_ENV, "13000-13300")  # dense; no worker picks from it
    for _ in range(300):
        planned = planned_ports(free_infra_settings(tmp_path))
        base = free_metrics_base(planned, 4)
        assert planned.isdisjoint(range(base, base + 4)), (base, sorted(planned))
        assert base + 3 < 13300
