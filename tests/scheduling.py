"""Which test module a parallel worker runs next (``pytest -n N --dist loadfile``).

pytest-xdist's loadfile scheduler queues modules by their number of tests, most first (its
``--loadscope-reorder``, on by default): the one-test modules that take minutes (the demo, the
chaos run) come last, and whichever worker draws the last of them runs on while the others
have nothing left (more so the more workers there are). This scheduler keeps xdist's loadfile units (each module whole on one worker) and picks them
by recorded time instead (``module_durations.json``, seconds per module, set-up and teardown
included), longest first: the long ones start early, the short ones fill the gaps at the end.

A worker asks for its next module before it starts the last tests of the one it has (xdist
hands it a unit when two or fewer of its tests are pending; a one-test module is at once).
A worker with more work still ahead of it than another worker gets the shortest module
waiting, not the longest: the longest goes to whichever worker frees up first.

Some modules keep the machine's cores busy for minutes (two gateways and a cloud in one
process tree, a fleet scored at ten times real time); most others wait on brokers and
timers. With three workers, three busy modules side by side overloaded a 2-core machine (a
MirrorMaker missed its start-up deadline), so at most ``MAX_BUSY`` modules of ``BUSY`` run at
once: a worker that asks while that many are running gets the longest other module waiting.

Refresh the table after the suite's times change: ``pytest -n 3 --dist loadfile
--junitxml=run.xml`` (as ``make test`` runs it), then ``python -m tests.scheduling run.xml``.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

DURATIONS = Path(__file__).with_name("module_durations.json")
# A module missing from the table (a new one): most modules take a few seconds.
DEFAULT_S = 5.0
# Modules that keep the cores busy throughout, and how many of them may run at once.
BUSY = frozenset(
    {
        "tests/e2e/test_demo.py",
        "tests/e2e/test_chaos.py",
        "tests/e2e/test_drift_loop.py",
        "tests/e2e/test_detection.py",
        "tests/ansible/test_gateways.py",
    }
)
MAX_BUSY = 2


def load_durations(path: Path = DURATIONS) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()}


class LongestFirstLoadFile(LoadFileScheduling):
    """xdist's loadfile scheduling, modules handed out by recorded time (see the module)."""

    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        self.durations = load_durations()

    def weight(self, scope: str) -> float:
        return self.durations.get(scope, DEFAULT_S)

    def _ahead(self, node: Any) -> float:
        """Estimated seconds of work assigned to ``node`` and not done yet."""
        total = 0.0
        for scope, tests in self.assigned_work.get(node, {}).items():
            if tests:
                total += self.weight(scope) * list(tests.values()).count(False) / len(tests)
        return total

    def _busy_running(self) -> int:
        """How many BUSY modules some worker holds with tests not yet done."""
        return sum(
            1
            for work in self.assigned_work.values()
            for scope, tests in work.items()
            if scope in BUSY and not all(tests.values())
        )

    def _assign_work_unit(self, node: Any) -> None:
        assert self.workqueue
        by_weight = sorted(self.workqueue, key=lambda s: (-self.weight(s), s))
        calm = [s for s in by_weight if s not in BUSY]
        if calm and self._busy_running() >= MAX_BUSY:
            by_weight = calm
        others = [self._ahead(n) for n in self.nodes if n is not node]
        busier = bool(others) and self._ahead(node) > min(others)
        scope = by_weight[-1] if busier else by_weight[0]
        # The base class pops the queue's first unit: put the chosen one there.
        self.workqueue.move_to_end(scope, last=False)
        super()._assign_work_unit(node)


def scheduler(config: pytest.Config, log: Any) -> LongestFirstLoadFile | None:
    """The scheduler for ``--dist loadfile`` (None: xdist's own for the other modes)."""
    if config.getvalue("dist") != "loadfile":
        return None
    return LongestFirstLoadFile(config, log)


def durations_from_junit(xml: Path) -> dict[str, float]:
    """Seconds per test module (set-up, call and teardown of its tests) from a JUnit XML
    report (pytest's default ``junit_duration_report = total``)."""
    seconds: dict[str, float] = defaultdict(float)
    for case in ET.parse(xml).getroot().iter("testcase"):
        classname = case.get("classname", "")
        parts = classname.split(".")
        # classname is the module's dotted path, then the class if any.
        for n in range(len(parts), 0, -1):
            path = "/".join(parts[:n]) + ".py"
            if Path(path).exists():
                seconds[path] += float(case.get("time", 0.0))
                break
    return dict(seconds)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.scheduling REPORT.xml", file=sys.stderr)
        return 2
    seconds = durations_from_junit(Path(argv[0]))
    ordered = {k: round(v, 1) for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])}
    DURATIONS.write_text(json.dumps(ordered, indent=1) + "\n")
    print(f"{len(ordered)} modules, {sum(ordered.values()) / 60:.1f} min -> {DURATIONS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
