"""The parallel workers' scheduler (tests/scheduling.py): modules go out longest first, and a
worker with more work ahead than another gets the shortest one waiting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests import scheduling

MODULES = {
    "tests/a/test_short.py": 3,  # module -> number of tests
    "tests/a/test_many.py": 40,
    "tests/a/test_long.py": 1,
    "tests/a/test_longer.py": 1,
    "tests/a/test_unknown.py": 2,
}
SECONDS = {
    "tests/a/test_short.py": 2.0,
    "tests/a/test_many.py": 20.0,
    "tests/a/test_long.py": 300.0,
    "tests/a/test_longer.py": 450.0,
}


class _Option:
    dist = "loadfile"
    tx = ["2*popen"]
    loadscopereorder = True


class _Config:
    option = _Option()

    def getvalue(self, name: str) -> Any:
        return getattr(self.option, name)


class _Node:
    def __init__(self, name: str) -> None:
        self.gateway = type("Gateway", (), {"id": name})()
        self.shutting_down = False
        self.sent: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent += indices

    def shutdown(self) -> None:
        self.shutting_down = True


def _scheduled(durations: dict[str, float], workers: int = 2) -> tuple[list[str], list[list[str]]]:
    ids = [f"{m}::test_{i}" for m, n in MODULES.items() for i in range(n)]

    class Workers(_Config):
        class option(_Option):  # noqa: N801
            tx = [f"{workers}*popen"]

    sched = scheduling.LongestFirstLoadFile(Workers())  # type: ignore[arg-type]
    sched.durations = durations
    nodes = [_Node(f"gw{n}") for n in range(workers)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, ids)
    sched.schedule()

    def modules(node: _Node) -> list[str]:
        return list(dict.fromkeys(ids[i].split("::")[0] for i in node.sent))

    return ids, [modules(n) for n in nodes]


def test_the_longest_modules_go_out_first_not_the_ones_with_most_tests() -> None:
    _, (first, second) = _scheduled(SECONDS)
    assert first[0] == "tests/a/test_longer.py"
    assert second[0] == "tests/a/test_long.py"


def test_a_worker_with_more_ahead_gets_the_shortest_module_waiting() -> None:
    _, (first, _second) = _scheduled(SECONDS)
    # gw0 has 450 s ahead, gw1 300 s: gw0's next module (taken at once: a one-test module's
    # worker asks for more before running it) is the shortest, not the 20 s one.
    assert first[1] == "tests/a/test_short.py"


def test_no_more_busy_modules_run_at_once_than_the_cap(monkeypatch: Any) -> None:
    """Three workers, three busy modules: the third worker starts on the longest calm one."""
    busy = {"tests/a/test_longer.py", "tests/a/test_long.py", "tests/a/test_many.py"}
    monkeypatch.setattr(scheduling, "BUSY", frozenset(busy))
    monkeypatch.setattr(scheduling, "MAX_BUSY", 2)
    _, firsts = _scheduled(SECONDS, workers=3)
    assert [m[0] for m in firsts] == [
        "tests/a/test_longer.py",
        "tests/a/test_long.py",
        "tests/a/test_unknown.py",  # not test_many.py (20 s, busy): the calm one, 5 s
    ]
    monkeypatch.setattr(scheduling, "MAX_BUSY", 3)
    _, firsts = _scheduled(SECONDS, workers=3)
    assert firsts[2][0] == "tests/a/test_many.py"


def test_a_module_missing_from_the_table_counts_as_a_short_one() -> None:
    sched = scheduling.LongestFirstLoadFile(_Config())  # type: ignore[arg-type]
    sched.durations = SECONDS
    assert sched.weight("tests/a/test_unknown.py") == scheduling.DEFAULT_S


def test_other_modes_keep_xdists_scheduler() -> None:
    class Load(_Config):
        class option(_Option):  # noqa: N801
            dist = "load"

    assert scheduling.scheduler(Load(), None) is None  # type: ignore[arg-type]


def test_the_table_is_made_from_a_junit_report(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tests" / "a").mkdir(parents=True)
    (tmp_path / "tests" / "a" / "test_x.py").touch()
    report = tmp_path / "run.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a.test_x" name="test_1" time="1.5"/>'
        '<testcase classname="tests.a.test_x.TestGroup" name="test_2" time="2.0"/>'
        "</testsuite></testsuites>"
    )
    assert scheduling.durations_from_junit(report) == {"tests/a/test_x.py": 3.5}
