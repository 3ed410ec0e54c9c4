"""Several openers starting the same fresh registry at the same instant (the signer's two loops,
a dashboard and a signer started together) all start, and find the schema complete."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import pytest

from cloud.registry import Registry, RegistryError
from cloud.registry import registry as registry_module
from cloud.registry.registry import SCHEMA_VERSION

ROUNDS = 50
OPENERS = 6
PROCESS_ROUNDS = 20


def _check(reg: Registry) -> list[str]:
    """What is wrong with a started registry's database (nothing, when it is complete)."""
    problems = []
    version = reg.db.execute("PRAGMA user_version").fetchone()[0]
    mode = reg.db.execute("PRAGMA journal_mode").fetchone()[0]
    tables = {r[0] for r in reg.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if version != SCHEMA_VERSION:
        problems.append(f"schema version {version}, expected {SCHEMA_VERSION}")
    if mode != "wal":
        problems.append(f"journal mode {mode}, expected wal")
    if not {"models", "runs", "requests", "actions", "trainer_status"} <= tables:
        problems.append(f"tables missing: {sorted(tables)}")
    return problems


def _open_at_once(root: Path, openers: int) -> list[str]:
    """Start ``openers`` registries on ``root`` in threads released together; returns what
    went wrong (an empty list when every one started on a complete, WAL-mode database)."""
    barrier = threading.Barrier(openers)
    problems: list[str] = []

    def opener() -> None:
        try:
            barrier.wait(10)
            with Registry(root) as reg:
                problems.extend(_check(reg))
        except Exception as exc:
            problems.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=opener) for _ in range(openers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    problems += [f"{t.name} still running" for t in threads if t.is_alive()]
    return problems


@pytest.mark.parametrize("openers", [OPENERS, 2])
def test_openers_racing_on_a_fresh_registry_all_start(tmp_path: Path, openers: int) -> None:
    failures = {}
    for i in range(ROUNDS):
        problems = _open_at_once(tmp_path / f"registry-{i}", openers)
        if problems:
            failures[i] = problems
    assert not failures, (
        f"{len(failures)} of {ROUNDS} rounds of {openers} openers went wrong: {failures}"
    )


def _open_in_process(root: Path, barrier: ProcessBarrier, results: multiprocessing.Queue) -> None:
    try:
        barrier.wait(10)
        with Registry(root) as reg:
            results.put(_check(reg))
    except Exception as exc:
        results.put([f"{type(exc).__name__}: {exc}"])


def test_processes_racing_on_a_fresh_registry_all_start(tmp_path: Path) -> None:
    # Not fork: a pytest worker may hold other tests' threads (a Kafka client's), whose locks a
    # forked child would inherit held. The fork server is a fresh process, this module loaded.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    openers = 3
    failures = {}
    for i in range(PROCESS_ROUNDS):
        barrier = ctx.Barrier(openers)
        results: multiprocessing.Queue = ctx.Queue()
        procs = [
            ctx.Process(
                target=_open_in_process, args=(tmp_path / f"registry-{i}", barrier, results)
            )
            for _ in range(openers)
        ]
        for proc in procs:
            proc.start()
        problems = [p for _ in procs for p in results.get(timeout=60)]
        for proc in procs:
            proc.join(10)
        if problems:
            failures[i] = problems
    assert not failures, (
        f"{len(failures)} of {PROCESS_ROUNDS} rounds of {openers} processes went wrong: {failures}"
    )


@pytest.mark.parametrize("wal", [False, True], ids=["new database", "wal database"])
def test_a_registry_locked_past_the_timeout_names_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wal: bool
) -> None:
    root = tmp_path / "registry"
    if wal:
        Registry(root).start().close()
    root.mkdir(exist_ok=True)
    holder = sqlite3.connect(root / "registry.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(registry_module, "_LOCK_TIMEOUT_S", 0.3)
    try:
        started = time.monotonic()
        with pytest.raises(RegistryError, match="database is locked") as caught:
            Registry(root).start()
        assert str(root / "registry.sqlite") in str(caught.value)
        assert time.monotonic() - started < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
